"""End to end on the embedded models: gemma3-270m MLP neurons sampled from the embedded corpus, explained,
simulated and scored by the embedded Qwen2.5-Coder-1.5B, through the CLI. Slow (minutes on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from autointerp.rundir import read_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_explain_end_to_end_on_embedded_models(tmp_path: Path) -> None:
    from autointerp.cli import main
    from autointerp.export import feature_rows
    from autointerp.pipeline import summarize

    run = tmp_path / "run"
    main(
        [
            "explain", "--model", "gemma3-270m", "--hook", "L6/mlp_neurons", "--features", "0-3",
            "--tokens", "6000", "--window", "32", "--explainer-kind", "highlighted", "--n-top-examples", "6",
            "--max-records-per-split", "2", "--threads", "1", "--run-dir", str(run),
        ]
    )  # fmt: skip
    rows = feature_rows(run)
    assert len(rows) == 4
    labels = [r["explanation"] for r in rows]
    assert sum(bool(lb and lb.strip()) for lb in labels) >= 3, labels
    explained = [r.get("score_correlation") for r in rows]
    baseline = [r.get("baseline_correlation") for r in rows]
    assert sum(v is not None for v in explained) >= 3, rows
    # the run's explanations beat the shuffled baseline on average
    pairs = [(e, b) for e, b in zip(explained, baseline, strict=True) if e is not None and b is not None]
    assert pairs and np.mean([e for e, _ in pairs]) > np.mean([b for _, b in pairs]), pairs
    summary = summarize(run)
    assert summary.n_explained >= 3 and summary.scores["correlation"]["explained"] is not None
    sims = list(read_jsonl(run / "simulations.jsonl"))
    assert sum(s["simulation"]["failed"] is None for s in sims) >= 0.8 * len(sims)
