"""The same options mean the same thing on `cache` and `explain`: a local SAE path works on both (its leading
``/`` kept), ``--model`` with ``--sae`` is the subject the SAE is applied to (used, never ignored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_input import run_cli, write_sae
from test_failed_not_final import Switchable

from autointerp.pipeline import Clients
from autointerp.rundir import load_run

TINY = ["--window", "16", "--tokens", "600", "--features", "0-3", "--threads", "1"]


def test_cache_reads_a_local_sae_path_with_model(tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path) -> None:
    sae = write_sae(tmp_path / "sae", tiny_model_dir)
    run = tmp_path / "run"
    args = ["cache", "--sae", str(sae), "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus_file),
            "--n-top", "12", "--n-train", "5", "--n-valid", "2", "--n-test-top", "3", "--batch-size", "8",
            *TINY, "--run-dir", str(run)]
    assert run_cli(args) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["source"] == sae.as_posix() and manifest["source"].startswith("/")
    assert manifest["model"] == str(tiny_model_dir) and manifest["hook"] == "L1/resid_post"


def test_explain_uses_model_with_a_local_sae(
    tiny_model_dir: Path,
    tiny_corpus_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import autointerp.pipeline

    llm = Switchable(down=False)
    monkeypatch.setattr(autointerp.pipeline, "open_clients", lambda config: (Clients(llm, llm, llm), []))
    # the SAE's own file names a model that is not here: only --model makes the run possible
    sae = write_sae(tmp_path / "sae", tmp_path / "not-here")
    run = tmp_path / "run"
    args = ["explain", "--sae", str(sae), "--model", str(tiny_model_dir), "--corpus", str(tiny_corpus_file), *TINY,
            "--max-records-per-split", "2", "--run-dir", str(run)]
    assert run_cli(args) in (0, 1)  # 1 only if a random feature never fired (dead: no explanation)
    assert {r.id.source for r in load_run(run).records.values()} == {sae.as_posix()}
    assert run_cli([*args[:3], *args[5:]]) == 2  # without --model the SAE's own model is used, and is not here


def test_explain_contrastive_samples_train_side_counterexamples_itself(
    tiny_model_dir: Path,
    tiny_corpus_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`explain --explainer-kind contrastive` samples the train_random split itself (disjoint from every test
    split), and its prompts show those windows as counterexamples."""
    import autointerp.pipeline
    from autointerp.explain import CONTRASTIVE_POOL
    from autointerp.records import SPLITS

    llm = Switchable(down=False)
    monkeypatch.setattr(autointerp.pipeline, "open_clients", lambda config: (Clients(llm, llm, llm), []))
    run = tmp_path / "run"
    # MLP neurons are dense: a counterexample is a window with no token above half the examples' maximum
    args = ["explain", "--model", str(tiny_model_dir), "--hook", "L1/mlp_neurons", "--corpus", str(tiny_corpus_file),
            "--window", "16", "--tokens", "4000", "--features", "0-3", "--threads", "1", "--explainer-kind",
            "contrastive", "--highlight-threshold", "0.5", "--scorers", "detection", "--run-dir", str(run)]
    assert run_cli(args) in (0, 1)  # 1 only if a feature had no counterexample in its train_random windows
    records = list(load_run(run).records.values())
    assert records and all(0 < len(r.train_random) <= CONTRASTIVE_POOL for r in records)
    for r in records:
        test_side = {w.window for s in SPLITS if s != "train_random" for w in getattr(r, s)}
        assert not test_side & {w.window for w in r.train_random}
    prompts = [m.content for req in llm.chat_requests for m in req.messages if "Counterexample 1:" in m.content]
    assert prompts, "no contrastive prompt was sent"
