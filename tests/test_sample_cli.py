"""`autointerp sample` (alias: `cache`) end to end: tiny local model (fast) and the embedded gemma3-270m (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autointerp.cli import main
from autointerp.record_store import load_feature_records


def _cache(args: list[str], command: str = "sample") -> int:
    try:
        main([command, *args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_sample_cli_tiny_and_cache_alias(tiny_model_dir: Path, tiny_corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--hook", "L1/mlp_neurons", "--corpus", str(tiny_corpus_file),
            "--tokens", "800", "--window", "16", "--batch-size", "8", "--n-top", "14", "--n-train", "5",
            "--n-test-top", "4",
            "--features", "0-9,20", "--run-dir", str(run), "--threads", "1"]
    assert _cache(args) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["command"] == "sample" and manifest["stages"]["sample"]["status"] == "done"
    assert manifest["content_fingerprint"] and len(manifest["content_fingerprint"]) == 64
    assert manifest["source"] == f"{tiny_model_dir}/L1/mlp_neurons"
    assert manifest["config"]["sampling"]["features"] == [*range(10), 20]
    assert manifest["versions"]["torch"]
    recs = load_feature_records(run)
    assert [r.id.index for r in recs] == [*range(10), 20]
    assert all(len(r.train) == 5 for r in recs if not r.dead)
    # rerunning the same command (here by its old name, `cache`) finds the finished records; other settings are refused
    assert _cache(args, "cache") == 0
    assert _cache([*args[:-4], "--tokens", "900", "--run-dir", str(run)]) == 2


@pytest.mark.parametrize(
    "extra",
    [
        ["--hook", "L7/mlp_neurons"],  # layer out of range
        ["--hook", "L1/nonsense"],
        ["--hook", "L1/mlp_neurons", "--features", "5-2"],
        ["--hook", "L1/mlp_neurons", "--features", "0-9999"],
        ["--hook", "L1/mlp_neurons", "--corpus", "/no/such/file.txt"],
        ["--hook", "L1/mlp_neurons", "--dtype", "float8"],
        ["--hook", "L1/mlp_neurons", "--n-top", "3"],
    ],
)
def test_sample_cli_bad_input_exits_2(extra: list[str], tiny_model_dir: Path, tiny_corpus_file: Path,
                                     tmp_path: Path) -> None:
    base = ["--model", str(tiny_model_dir), "--corpus", str(tiny_corpus_file), "--tokens", "200", "--window", "16",
            "--run-dir", str(tmp_path / "r")]
    assert _cache([*base, *extra]) == 2
    assert not (tmp_path / "r").exists(), "bad input must not leave a run directory behind"


@pytest.mark.slow
def test_cache_real_gemma(tmp_path: Path) -> None:
    """The embedded gemma3-270m (converted once into the cache) through the CLI on the embedded wiki corpus."""
    run = tmp_path / "g"
    code = _cache(["--hook", "L6/mlp_neurons", "--tokens", "1500", "--features", "0-15", "--batch-size", "8",
                   "--n-top", "20", "--n-train", "10", "--n-valid", "2", "--n-test-top", "5", "--n-random", "5",
                   "--run-dir", str(run)])
    assert code == 0
    from autointerp.embedded import hf_folder

    assert (hf_folder("gemma3-270m") / "config.json").exists()
    recs = load_feature_records(run)
    assert len(recs) == 16
    live = [r for r in recs if not r.dead]
    assert len(live) >= 12
    for r in live:
        assert 0 < r.stats.frequency < 1 and r.stats.max > 0
        assert r.train and all(len(x.tokens) == len(x.activations) for x in r.train)
        assert r.train[0].max_activation == pytest.approx(max(x.max_activation for x in r.train))
        text = "".join(r.train[0].tokens)
        assert sum(c.isalpha() for c in text) > len(text) / 2  # real English text, decoded
    top = max(r.stats.max for r in live)
    assert np.isfinite(top)


