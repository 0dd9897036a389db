"""Issue #15: does another simulation prompt make the simulator read the label? A candidate template against the
default one, on the same records of a finished explain run, paired latent by latent.

    .venv/bin/python benchmarks/bench_simulator_prompts.py --run RUN --out OUT.jsonl [--max 25] \
        [--template benchmarks/prompts/simulate_contrast.j2]

The default candidate (``benchmarks/prompts/simulate_contrast.j2``) has few-shot examples that simulate the same
text under two labels with different answers, and repeats the label next to the listing ("Activations (high
only for LABEL):"). For each feature of RUN (an ``autointerp explain`` run with its shuffled baseline) that has a
selected label, a baseline and plain scores, in id order, at most ``--max``: the run's scored test records
(``ExplainConfig.scored_records``) are simulated with the template under the label and under the shuffled
label, one request per record as the pipeline sends them (``LogprobSimulator`` on the run's simulator). Then, as
the pipeline computes them: the label's and the baseline's correlation (``simulation_scores``, pooled over
test_top + test_random) and the label prior correlation (``label_prior_correlation``). The default arm is the
run's own stored scores of the same records. One JSON line per feature goes to OUT (a rerun skips the features
already there); the paired differences with bootstrap 95% CIs are printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_label_dependence import gain, per_latent
from bench_prompt_grouping import paired_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


async def score_feature(client: Any, template: Path, data: Any, cfg: Any, feature: str) -> dict[str, Any]:
    """The candidate arm's correlation (label, baseline) and label prior correlation of one feature."""
    from autointerp.prompts import load_template
    from autointerp.score import label_prior_correlation, simulation_scores
    from autointerp.simulate import LogprobSimulator

    record = data.records[feature]
    labels = {"label": data.selected(feature).text, "baseline": data.baseline(feature).text}
    row: dict[str, Any] = {"feature": feature, **{f"{k}_text": v for k, v in labels.items()}}
    sims: dict[str, list[Any]] = {}
    for arm, text in labels.items():
        sim = LogprobSimulator(client, text)
        sim.template = load_template(template.name, template.parent)
        splits = {}
        for split, idx in cfg.scored_records(record):
            recs = [getattr(record, split)[i] for i in idx]
            out = [await sim.simulate(r.tokens) for r in recs]  # one request per record, as the pipeline
            splits[split] = (recs, out)
            sims.setdefault(arm, []).extend(out)
        corr = next(s for s in simulation_scores(splits, None, cfg.max_failed_fraction) if s.name == "correlation")
        row[arm], row[f"{arm}_reason"] = corr.value, corr.reason
    prior = label_prior_correlation(sims["label"], sims["baseline"], cfg.max_failed_fraction)
    row["label_prior"], row["label_prior_reason"] = prior.value, prior.reason
    return row


async def run(args: argparse.Namespace) -> None:
    from autointerp.llm.base import ClientConfig
    from autointerp.llm.factory import make_client
    from autointerp.pipeline import ExplainConfig
    from autointerp.rundir import load_run

    plain = per_latent(args.run).get("plain", {})
    feats = sorted((f for f, r in plain.items() if {"label", "baseline"} <= r.keys()),
                   key=lambda f: int(f.rsplit(":", 1)[1]))[: args.max]
    done = {json.loads(line)["feature"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    todo = [f for f in feats if f not in done]
    data = load_run(args.run, features=set(todo)) if todo else None
    cfg = ExplainConfig.from_dict(json.loads((args.run / "manifest.json").read_text())["config"])
    client = make_client(args.llm or cfg.simulator, ClientConfig(threads=args.threads, timeout_s=600, cache=False))
    t0 = time.time()
    try:
        for i, f in enumerate(todo):
            row = await score_feature(client, args.template, data, cfg, f)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"[{i + 1}/{len(todo)}] {f}: label {row['label']}, baseline {row['baseline']}, prior "
                  f"{row['label_prior']} ({time.time() - t0:.0f} s)", flush=True)
    finally:
        await client.aclose()
    print(f"{len(todo)} features simulated in {time.time() - t0:.0f} s; template {args.template}")
    report(plain, args.out)


def report(plain: dict[str, dict[str, float | None]], out: Path) -> None:
    rows = {r["feature"]: r for r in map(json.loads, out.read_text().splitlines())}
    both = [f for f in rows if f in plain]
    name = ("default", "candidate")
    print(paired_line("correlation of the label", [(plain[f].get("label"), rows[f]["label"]) for f in both], name))
    print(paired_line("shuffled baseline", [(plain[f].get("baseline"), rows[f]["baseline"]) for f in both], name))
    print(paired_line("gain over the baseline", [(gain(plain[f]), gain(rows[f])) for f in both], name))
    print(paired_line("label prior correlation",
                      [(plain[f].get("label_prior"), rows[f]["label_prior"]) for f in both], name))
    for arm, src in (("default", {f: plain[f] for f in both}), ("candidate", rows)):
        pri = [v for f in both if (v := src[f].get("label_prior")) is not None]
        print(f"{arm}: median label prior correlation {np.median(pri):.2f} (n = {len(pri)})" if pri else f"{arm}: -")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a finished explain run with its shuffled baseline")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one per feature (a rerun resumes)")
    ap.add_argument("--template", type=Path, default=HERE / "prompts" / "simulate_contrast.j2")
    ap.add_argument("--max", type=int, default=25)
    ap.add_argument("--llm", default=None, help="simulator spec (default: the run's own)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:
        report(per_latent(args.run).get("plain", {}), args.out)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
