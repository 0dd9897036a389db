"""Issue #15: does the correlation score read the label? Rescore a finished explain run with
``--subtract-prior`` and compare it, latent by latent, with the run's plain simulation scores.

    .venv/bin/python benchmarks/bench_label_dependence.py --run RUN --out OUT [--every 2]

RUN (an ``autointerp explain`` run with the simulation scorer and its shuffled baseline) is copied to OUT and
left as it is. ``run_score(OUT, "simulation", settings={"subtract_prior": True})`` (what ``autointerp score
OUT --scorers simulation --subtract-prior`` runs) then adds the prior-subtracted scores beside the plain ones,
on every feature whose label and baseline have plain scores or, with ``--every K`` / ``--max N``, on every K-th
of them in id order, at most N (timed; its only LLM
requests are the neutral-label simulations, one per record). For each setting (plain, prior-subtracted) it
prints the mean correlation of the labels and of the shuffled baselines with bootstrap 95% CIs, the paired
gain (label - baseline, per latent), the median label prior correlation (simulations under the label vs under
the shuffled label), and the paired differences (prior-subtracted - plain) of the correlation and of the gain.
``--again`` reuses OUT (a rerun resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from bench_prompt_grouping import paired_line

from autointerp.records import Score

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def score_entries(run: Path, names: tuple[str, ...]) -> list[tuple[str, str, str, bool, Score]]:
    """(feature, score name, judge, baseline?, score) of every stored score of the run named in ``names``."""
    from autointerp.rundir import load_run

    data = load_run(run, records=False, simulations=False)
    out = []
    for (eid, name, judge), sc in data.score_rows.items():
        expl = data.explanations.get(eid)
        if name in names and expl is not None:
            out.append((expl.feature, name, judge, expl.baseline, sc))
    return out


def per_latent(run: Path) -> dict[str, dict[str, dict[str, float | None]]]:
    """{setting: {feature: {correlation, baseline, label_prior}}} over the run's simulation judges."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for feature, name, judge, baseline, sc in score_entries(run, ("correlation", "label_prior_correlation")):
        setting = "prior-subtracted" if "+prior-subtracted" in judge else "plain"
        row = out.setdefault(setting, {}).setdefault(feature, {})
        key = "label_prior" if name == "label_prior_correlation" else ("baseline" if baseline else "label")
        row[key] = sc.value
    _plain_label_prior(run, out.get("plain", {}))
    return out


def _plain_label_prior(run: Path, plain: dict[str, dict[str, float | None]]) -> None:
    """The plain label prior correlation of features that lack it (a run cut before its end, when the pipeline
    adds it), from the stored simulations of the scored test splits, with the pipeline's function."""
    from autointerp.pipeline import ExplainConfig, stored_label_prior
    from autointerp.rundir import load_run

    todo = [f for f, r in plain.items() if "label_prior" not in r and {"label", "baseline"} <= r.keys()]
    if not todo:
        return
    data = load_run(run, features=set(todo))
    cfg = ExplainConfig.from_dict({**data.manifest.get("config", {}), "subtract_prior": False})
    for f in todo:
        sc = stored_label_prior(data, cfg, f)
        if sc is not None:
            plain[f]["label_prior"] = sc.value


def gain(r: dict[str, float | None]) -> float | None:
    """A latent's paired gain: its label's correlation minus its shuffled baseline's (None if either is)."""
    a, b = r.get("label"), r.get("baseline")
    return None if a is None or b is None else a - b


def report(run: Path) -> None:
    from autointerp.score import bootstrap_ci

    rows = per_latent(run)
    for setting, feats in sorted(rows.items()):
        lab = [r.get("label") for r in feats.values()]
        base = [r.get("baseline") for r in feats.values()]
        prior = [v for r in feats.values() if (v := r.get("label_prior")) is not None]
        print(paired_line(f"{setting}: correlation, shuffled baseline -> label",
                          list(zip(base, lab, strict=True)), ("baseline", "label")))
        med = f"{np.median(prior):.2f}" if prior else "-"
        print(f"{setting}: median label prior correlation {med} (n = {len(prior)})")
        ci = bootstrap_ci(lab)
        print(f"{setting}: mean correlation {'-' if ci is None else f'{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]'}")
    if {"plain", "prior-subtracted"} <= rows.keys():
        plain, sub = rows["plain"], rows["prior-subtracted"]
        both = sorted(plain.keys() & sub.keys())

        print(paired_line("correlation of the label", [(plain[f].get("label"), sub[f].get("label")) for f in both],
                          ("plain", "prior-subtracted")))
        print(paired_line("gain over the shuffled baseline", [(gain(plain[f]), gain(sub[f])) for f in both],
                          ("plain", "prior-subtracted")))
        print(paired_line("label prior correlation",
                          [(plain[f].get("label_prior"), sub[f].get("label_prior")) for f in both],
                          ("plain", "prior-subtracted")))
        print("\nfeature | plain: label / baseline / prior | prior-subtracted: label / baseline / prior")

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:+.2f}"

        for f in both:
            p, s = plain[f], sub[f]
            print(f"{f} | {fmt(p.get('label'))} / {fmt(p.get('baseline'))} / {fmt(p.get('label_prior'))} | "
                  f"{fmt(s.get('label'))} / {fmt(s.get('baseline'))} / {fmt(s.get('label_prior'))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished explain run (left as it is)")
    ap.add_argument("--out", type=Path, required=True, help="where the rescored copy goes")
    ap.add_argument("--again", action="store_true", help="reuse --out (resume, or only report)")
    ap.add_argument("--neutral-label", default=None)
    ap.add_argument("--every", type=int, default=1, help="rescore every K-th feature of the run (id order)")
    ap.add_argument("--max", type=int, default=0, help="at most this many features (0: all)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from autointerp.pipeline import run_score
    from autointerp.rundir import load_run

    if not args.again:
        if args.out.exists():
            sys.exit(f"{args.out} exists; pass --again to reuse it, or another --out")
        shutil.copytree(args.run, args.out)
    data = load_run(args.out, records=False, simulations=False)
    # features whose label and shuffled baseline both have their plain scores (a run cut short has fewer)
    plain = per_latent(args.out).get("plain", {})
    scored = {f for f, r in plain.items() if r.get("label") is not None or r.get("baseline") is not None}
    both = [f for f in data.stats if f in scored and {"label", "baseline"} <= plain[f].keys()]
    feats = sorted(both, key=lambda f: (len(f), f))[:: args.every][: args.max or None]
    settings: dict[str, object] = {"subtract_prior": True}
    if args.neutral_label:
        settings["neutral_label"] = args.neutral_label
    load = os.getloadavg()
    t0 = time.perf_counter()
    summary = asyncio.run(run_score(args.out, "simulation", settings=settings, features=feats))
    seconds = time.perf_counter() - t0
    print(f"rescore of {len(feats)} features: {seconds:.0f} s ({seconds / max(1, len(feats)):.1f} s per feature), "
          f"failed {len(summary.failed_features)}, load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    sim = {k: v.to_json() if hasattr(v, "to_json") else v for k, v in summary.usage.items()}
    print(f"usage of the rescoring: {json.dumps(sim, default=str)}")
    report(args.out)


if __name__ == "__main__":
    main()
