"""The scorers' bad input on the command line: one line, exit 2, nothing written (steering a source with no
decoder, a scorer model that is not installed, an alpha that is not a number)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from test_bad_input import NEURONS, TINY, assert_one_line_error, run_cli


def _sae_without_decoder(folder: Path, model: Path, d: int = 32, n: int = 40) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(
        folder / "params.npz",
        W_enc=rng.normal(size=(d, n)).astype(np.float32),
        b_enc=np.zeros(n, np.float32),
        b_dec=np.zeros(d, np.float32),
        threshold=np.full(n, 0.1, np.float32),
    )
    (folder / "autointerp_sae.json").write_text(json.dumps({"hook": "L1/resid_post", "model": str(model)}))
    return folder


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("alpha not a number", [*NEURONS, "--scorers", "intervention", "--alpha", "strong"], "is not a number"),
        ("unknown negatives", [*NEURONS, "--negatives", "nasty"], "--negatives 'nasty' is unknown"),
        ("surprisal model missing", [*NEURONS, "--scorers", "surprisal", "--surprisal-model", "/no/lm"], "/no/lm"),
        ("embedding model not installed", [*NEURONS, "--scorers", "embedding"], "is not installed"),
        ("steering a source with no decoder", [*TINY, "--sae", "{nodec}", "--scorers", "intervention_kl"],
         "has no decoder"),
    ],
)
def test_scorer_bad_input_exits_2_before_any_work(
    name: str,
    args: list[str],
    message: str,
    tiny_model_dir: Path,
    tiny_corpus_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AUTOINTERP_RUNS", str(tmp_path / "runs"))
    if name == "embedding model not installed":
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "all_minilm_l6_v2" else real(n, *a)
        )
    fill = {
        "model": str(tiny_model_dir),
        "corpus": str(tiny_corpus_file),
        "nodec": str(_sae_without_decoder(tmp_path / "nodec", tiny_model_dir)),
    }
    work = tmp_path / "work"
    work.mkdir()
    argv = ["explain", *(a.format(**fill) for a in args), "--run-dir", str(work / "run")]
    capsys.readouterr()
    assert run_cli(argv) == 2, name
    err = capsys.readouterr().err
    assert_one_line_error(err)
    assert message in err
    assert list(work.iterdir()) == [] and not (tmp_path / "runs").exists()
