"""Write a synthetic run directory (no models, no LLM): for tests, demos and trying the report.

The files follow the run-directory schema exactly (records, explanations with a shuffled baseline,
simulations, scores with some undefined values), built from the types in :mod:`autointerp.records`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autointerp.records import (
    ActivationRecord,
    Explanation,
    FeatureId,
    FeatureRecord,
    FeatureStats,
    Score,
    Simulation,
    Usage,
)
from autointerp.rundir import RunDir, append_jsonl, atomic_write_json

if TYPE_CHECKING:
    from autointerp.rundir import RunData

_WORDS = (
    "the city of Paris lies on the Seine and London on the Thames while Berlin sits on the Spree "
    "in 1889 a tower was built for the fair and it drew millions of visitors from many countries"
).split()
_LABELS = (
    "names of European capital cities",
    "years in the nineteenth century",
    "the word 'the' before a noun",
    "rivers and bodies of water",
    "verbs in the past tense",
    "prepositions of place",
    "numbers and counts",
    "tokens after a comma",
)
EVIL_TOKENS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</script><script>alert(2)</script>")
"""Hostile token strings: a report must show them as text and never run them."""


def _record(rng: np.random.Generator, n_tokens: int, strength: float, window: int, evil: bool) -> ActivationRecord:
    tokens = [" " + str(w) for w in rng.choice(_WORDS, size=n_tokens)]
    if evil:
        for j, t in enumerate(EVIL_TOKENS):
            tokens[(j * 3 + 1) % n_tokens] = t
        tokens[-1] = "\n"
    acts = np.maximum(rng.normal(0.0, 1.0, n_tokens), 0.0) * strength
    return ActivationRecord(tokens, list(range(window * 100, window * 100 + n_tokens)), acts.astype(np.float32), window)


def write_synthetic_run(
    path: Path,
    *,
    n_features: int = 6,
    seed: int = 0,
    quality: float = 0.6,
    n_tokens: int = 16,
    evil_tokens: bool = False,
    config: dict[str, Any] | None = None,
    source: str = "synthetic/L0/mlp_neurons",
    vocab: bool = False,
    output_scores: bool = False,
) -> RunDir:
    """Write a complete synthetic run into ``path``. ``quality`` (0..1) sets how well simulations follow
    the true activations (so sweep cells can differ); feature 1 gets an undefined correlation and a
    failed simulation, so every report path is exercised; ``vocab`` adds a vocabulary projection to every
    record; ``output_scores`` adds an output-side score (``intervention_kl``, the same for a label and its
    baseline, as steering does not read the label). Returns the RunDir."""
    rng = np.random.default_rng(seed)
    run = RunDir.create(Path(path), "explain", config or {"synthetic": True, "seed": seed, "quality": quality})
    records, expl_rows, sim_rows, score_rows = [], [], [], []
    labels = [_LABELS[i % len(_LABELS)] for i in range(n_features)]
    for i in range(n_features):
        fid = FeatureId(source, i)
        freq = float(10 ** rng.uniform(-4, -0.5))
        top = [_record(rng, n_tokens, 3.0, 10 * i + k, evil_tokens and i == 0 and k == 0) for k in range(3)]
        quant = [_record(rng, n_tokens, 1.0, 10 * i + 3 + k, False) for k in range(2)]
        rand = [_record(rng, n_tokens, 0.2, 10 * i + 5 + k, False) for k in range(2)]
        train = [_record(rng, n_tokens, 3.0, 10 * i + 7 + k, False) for k in range(2)]
        mx = max(r.max_activation for r in top + quant + rand + train)
        stats = FeatureStats(
            n_tokens=10_000, frequency=freq, max=mx, mean=mx * freq / 3, mean_active=mx / 3,
            quantile_edges=[0.0, mx / 4, mx / 2, mx],
        )
        rec = FeatureRecord(fid, stats, train, top, quant, rand)
        if vocab:  # a logit-lens projection; feature 0's promoted tokens include the hostile strings
            words = [str(w) for w in rng.choice(_WORDS, size=10, replace=False)]
            promoted = list(EVIL_TOKENS) + words[:5] if evil_tokens and i == 0 else words[:5]
            rec.vocab_projection = {
                "top": [[" " + w, round(float(8 - k), 3)] for k, w in enumerate(promoted)],
                "bottom": [[" " + w, round(float(-3 - k), 3)] for k, w in enumerate(words[5:])],
                "method": "synthetic",
            }
        records.append(rec.to_json())
        kl = float(rng.uniform(0.1, 5.0)) if output_scores else 0.0  # drawn only when asked: seeds stay stable
        for kind, text in (("0", labels[i]), ("baseline", labels[(i + 1) % n_features])):
            eid = f"{fid}#{kind}"
            base = kind == "baseline"
            ex = Explanation(fid, text, "synthetic[none]", "0" * 16, raw=text, usage=Usage(10, 5, 1), baseline=base)
            expl_rows.append({**ex.to_json(), "explanation_id": eid, "selected": not base})
            q = 0.1 if base else quality
            trues: list[np.ndarray] = []
            sims: list[np.ndarray] = []
            for split in ("test_top", "test_quantiles", "test_random"):
                for j, r in enumerate(getattr(rec, split)):
                    if i == 1 and split == "test_random" and j == 0 and not base:
                        sim = Simulation(None, failed="the simulator's reply had no value for token 3")
                    else:
                        noise = rng.normal(0, 1, len(r.activations))
                        exp_ = np.clip(q * r.activations / max(mx, 1e-6) * 9 + (1 - q) * np.abs(noise) * 3, 0, 9)
                        sim = Simulation(exp_.astype(np.float32))
                        trues.append(r.activations)
                        sims.append(exp_)
                    sim_rows.append(
                        {"explanation_id": eid, "feature": str(fid), "split": split, "record_index": j,
                         "simulator": "synthetic_sim[none]", "simulation": sim.to_json()}
                    )
            t, s = np.concatenate(trues), np.concatenate(sims)
            corr = float(np.corrcoef(t, s)[0, 1])
            scores = [
                Score("correlation", corr, settings={"pooled": True})
                if i != 1 or base
                else Score("correlation", None, reason="true activations are constant over the scored records"),
                Score("detection", float(np.clip(0.5 + q * 0.4 + rng.normal(0, 0.05), 0, 1)), settings={"n": 10}),
            ]
            if output_scores:
                scores.append(Score("intervention_kl", kl, settings={"alpha": 4.0 * mx}))
            for sc in scores:
                score_rows.append({"explanation_id": eid, "feature": str(fid), "baseline": base, "score": sc.to_json()})
    append_jsonl(run.file("records.jsonl"), records)
    append_jsonl(run.file("explanations.jsonl"), expl_rows)
    append_jsonl(run.file("simulations.jsonl"), sim_rows)
    append_jsonl(run.file("scores.jsonl"), score_rows)
    atomic_write_json(run.file("usage.json"), Usage(1000, 200, 24, 0, 0.0).to_json())
    run.set_stage("explain", "done")
    return run


def synthetic_rundata(n_features: int, *, seed: int = 0, source: str = "synthetic/L0/mlp_neurons") -> RunData:
    """An in-memory run of ``n_features`` features with labels, a shuffled baseline, two scores (some
    undefined, with a reason) and statistics, but no records or simulations: builds in about a second
    for 16,384 features, so browser tests can exercise the large-run layout quickly."""
    from autointerp.rundir import ExplanationRow, RunData

    rng = np.random.default_rng(seed)
    data = RunData(RunDir(Path(f"/synthetic-{n_features}")), {"command": "explain", "config": {"seed": seed}})
    corr = rng.uniform(-0.2, 0.9, n_features)
    base = rng.normal(0.0, 0.1, n_features)
    det = rng.uniform(0.4, 1.0, n_features)
    freq = 10 ** rng.uniform(-5, -0.5, n_features)
    mx = rng.uniform(0.5, 20.0, n_features)
    for i in range(n_features):
        fid = str(FeatureId(source, i))
        f, m = float(freq[i]), float(mx[i])
        data.stats[fid] = FeatureStats(10_000, f, m, m * f / 3, m / 3)
        label = f"{_LABELS[i % len(_LABELS)]} (variant {i})"
        shuffled = _LABELS[(i + 1) % len(_LABELS)]
        for eid, text, is_base in ((f"{fid}#0", label, False), (f"{fid}#baseline", shuffled, True)):
            data.explanations[eid] = ExplanationRow(eid, fid, text, "synthetic[none]", 0, is_base, not is_base, {})
        c = (
            Score("correlation", None, reason="true activations are constant over the scored records")
            if i % 97 == 1
            else Score("correlation", float(corr[i]))
        )
        for eid, sc in (
            (f"{fid}#0", c),
            (f"{fid}#0", Score("detection", float(det[i]))),
            (f"{fid}#baseline", Score("correlation", float(base[i]))),
            (f"{fid}#baseline", Score("detection", 0.5)),
        ):
            data.score_rows[(eid, sc.name, "synthetic_judge[none]")] = sc
    return data
