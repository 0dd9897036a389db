"""Fewer prompts per latent (issue #12 item 4), measured against the defaults: the paired difference
(option - default, per latent, with its bootstrap 95% CI) of the simulation correlation and of detection's
balanced accuracy, and the prompt tokens sent and not served from the backend's prefix cache, per latent.

    flock /tmp/autointerp-heavy.lock timeout 840 .venv/bin/python benchmarks/bench_prompt_grouping.py \\
        --source-run /tmp/scorers-bench/run/A-default --out /tmp/batch-bench/results.json
    .venv/bin/python benchmarks/bench_prompt_grouping.py --out /tmp/batch-bench/results.json --report-only

The selected explanations of an existing explain run (``--source-run``: its feature records and labels; no
explaining is repeated) are scored twice with the same LLM, in groups of ``--latents-per-prompt`` latents:

* simulation correlation (pooled over the first ``--records`` records of ``test_top`` and ``test_random``,
  OpenAI's ``ev_correlation_score``), with the default (one record per all-at-once prompt) and with
  ``records_per_prompt`` = ``--records`` (the records of a split in one prompt), per latent;
* detection balanced accuracy (``--examples`` activating + ``--examples`` non-activating windows, 5 per
  prompt, judge P(yes) off: it does not change the balanced accuracy), the group's latents scored at once,
  each in its own prompts (default) or their parts in one prompt per round (``latents_per_prompt``).

``--mode layout`` measures instead the judge prompt with the examples before the explanation
(``judge_examples_first``) against the default (explanation first): each latent's detection under its label
and under its shuffled baseline label (the source run's ``#baseline`` row), the two run at once so their
prompts reach the backend one after the other, as the pipeline sends them; paired difference of the
label's balanced accuracy, and tokens per latent (label + baseline).

Both arms of a group run back to back, so every finished group gives paired values; results are written
after each group, and a rerun skips the groups already done (resumable under a timeout). Tokens come from
the simulators' and scorers' own usage (llama.cpp reports the tokens it served from its cache).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from autointerp.records import ActivationRecord, FeatureRecord, Usage
from autointerp.rundir import load_run, read_jsonl
from autointerp.score import (
    ClassifierSettings,
    DetectionScorer,
    JudgeGrouper,
    bootstrap_ci,
    correlation_score,
)
from autointerp.simulate import LogprobSimulator

log = logging.getLogger("bench_prompt_grouping")
ARMS = ("default", "option")
LAYOUT_ARMS = ("explanation_first", "examples_first")


def _tokens(u: Usage) -> dict[str, int]:
    return {"sent": u.prompt_tokens, "uncached": u.prompt_tokens - u.cached_prompt_tokens, "requests": u.requests}


async def simulate_latent(client: Any, label: str, rec: FeatureRecord, n: int, together: bool) -> dict[str, Any]:
    sim = LogprobSimulator(client, label)
    splits = [rec.test_top[:n], rec.test_random[:n]]
    if together:  # records_per_prompt = n: one prompt per split
        done = await asyncio.gather(*(sim.simulate_many([r.tokens for r in recs]) for recs in splits))
    else:
        done = await asyncio.gather(*(asyncio.gather(*(sim.simulate(r.tokens) for r in recs)) for recs in splits))
    records: list[ActivationRecord] = [r for recs in splits for r in recs]
    sims = [s for part in done for s in part]
    score = correlation_score("correlation", records, sims)
    return {"correlation": score.value, "reason": score.reason, "tokens": _tokens(sim.usage)}


async def detect_group(
    client: Any,
    labels: list[str],
    recs: list[FeatureRecord],
    examples: int,
    grouped: bool,
    examples_first: bool = False,
) -> list[dict[str, Any]]:
    """Detection of ``recs[i]`` under ``labels[i]``, all at once (grouped: one grouper for all)."""
    settings = ClassifierSettings(
        n_positive=examples, n_negative=examples, judge_probabilities=False, examples_first=examples_first
    )
    grouper = JudgeGrouper(len(recs)) if grouped else None
    scorers = [DetectionScorer(client, settings) for _ in recs]
    for s in scorers:
        s.grouper = grouper
    scores = await asyncio.gather(*(s.score(lab, r) for s, lab, r in zip(scorers, labels, recs, strict=True)))
    out = []
    for sc in scores:
        d = sc.details
        u = Usage(prompt_tokens=d.get("prompt_tokens", 0), cached_prompt_tokens=d.get("cached_prompt_tokens", 0),
                  requests=d.get("requests", 0))
        out.append({"detection": sc.value, "reason": sc.reason, "failed_prompts": d.get("failed_prompts"),
                    "tokens": _tokens(u)})
    return out


def paired_line(what: str, pairs: list[tuple[float | None, float | None]], arms: tuple[str, str]) -> str:
    """Means of both arms and the paired difference (second - first) with bootstrap 95% CIs."""
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    ci = bootstrap_ci([b - a for a, b in both])
    ma, mb = bootstrap_ci([a for a, _ in both]), bootstrap_ci([b for _, b in both])
    if ci is None or ma is None or mb is None:
        return f"{what}: no latent with both scores defined"
    return (f"{what}: {arms[0]} {ma[0]:.3f} [{ma[1]:.3f}, {ma[2]:.3f}], {arms[1]} {mb[0]:.3f} [{mb[1]:.3f}, "
            f"{mb[2]:.3f}]; paired {arms[1]} - {arms[0]} {ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}] "
            f"(n = {len(both)}, {len(pairs) - len(both)} undefined)")


def report(results: dict[str, Any]) -> None:
    done = [f for f, r in results["latents"].items() if all(a in r for a in ARMS)]
    print(f"latents with both arms: {len(done)}; settings: {json.dumps(results['settings'])}")
    for name, what in (("correlation", "simulation correlation"), ("detection", "detection balanced accuracy")):
        pairs = [(results["latents"][f]["default"][name], results["latents"][f]["option"][name]) for f in done]
        print(paired_line(what, pairs, ("default", "option")))
    n = max(1, len(done))
    for arm in ARMS:
        for part, key in (("simulation", "sim_tokens"), ("detection", "det_tokens")):
            t = {k: sum(results["latents"][f][arm][key][k] for f in done) for k in ("sent", "uncached", "requests")}
            ratio = t["uncached"] / t["sent"] if t["sent"] else float("nan")
            print(f"{arm:7s} {part:10s}: per latent {t['requests'] / n:.1f} requests, sent {t['sent'] / n:,.0f}, "
                  f"uncached {t['uncached'] / n:,.0f} ({ratio:.3f} of sent)")


async def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from autointerp.llm import ClientConfig, make_client

    data = load_run(args.source_run)
    rows = [r for r in read_jsonl(args.source_run / "explanations.jsonl") if r.get("selected")]
    rows = rows[: args.max_features] if args.max_features else rows
    spec = args.llm or rows[0]["explainer"].split("[", 1)[-1].rstrip("]")
    client = make_client(spec, ClientConfig(cache=False, timeout_s=1800, max_concurrency=16, threads=args.threads))
    strategy = await client.settle_logprob_strategy()
    results["settings"].update(llm=spec, logprob_strategy=strategy)
    groups = [rows[i : i + args.latents_per_prompt] for i in range(0, len(rows), args.latents_per_prompt)]
    try:
        for g in groups:
            feats = [r["feature"] for r in g]
            if all(all(a in results["latents"].get(f, {}) for a in ARMS) for f in feats):
                continue
            labels, recs = [r["text"] for r in g], [data.records[f] for f in feats]
            for arm in ARMS:
                if all(arm in results["latents"].get(f, {}) for f in feats):
                    continue
                t = time.time()
                together = arm == "option"
                if args.skip_simulation:
                    no_sim = {"correlation": None, "reason": "not simulated", "tokens": _tokens(Usage())}
                    sims = [no_sim] * len(recs)
                else:
                    jobs = (simulate_latent(client, labels[i], recs[i], args.records, together) for i in range(len(g)))
                    sims = list(await asyncio.gather(*jobs))
                if args.skip_detection:
                    no_det = {"detection": None, "reason": "not judged", "failed_prompts": None,
                              "tokens": _tokens(Usage())}
                    dets = [no_det] * len(recs)
                else:
                    dets = await detect_group(client, labels, recs, args.examples, together)
                for f, s, d in zip(feats, sims, dets, strict=True):
                    results["latents"].setdefault(f, {})[arm] = {
                        "correlation": s["correlation"], "correlation_reason": s["reason"], "sim_tokens": s["tokens"],
                        "detection": d["detection"], "detection_reason": d["reason"], "det_tokens": d["tokens"],
                        "failed_prompts": d["failed_prompts"],
                    }
                args.out.write_text(json.dumps(results, indent=1))
                print(f"group {feats} {arm} done in {time.time() - t:.0f} s; load average {os.getloadavg()[0]:.2f}",
                      flush=True)
    finally:
        await client.aclose()


def report_layout(results: dict[str, Any]) -> None:
    done = [f for f, r in results["latents"].items() if all(a in r for a in LAYOUT_ARMS)]
    print(f"latents with both layouts: {len(done)}; settings: {json.dumps(results['settings'])}")
    for who in ("label", "baseline"):
        pairs = [(results["latents"][f][LAYOUT_ARMS[0]][who]["detection"],
                  results["latents"][f][LAYOUT_ARMS[1]][who]["detection"]) for f in done]
        what = f"detection balanced accuracy under the {who}"
        print(paired_line(what, pairs, ("explanation first", "examples first")))
    n = max(1, len(done))
    for arm in LAYOUT_ARMS:
        for who in ("label", "baseline", "both"):
            whos = ("label", "baseline") if who == "both" else (who,)
            t = {k: sum(results["latents"][f][arm][w]["tokens"][k] for f in done for w in whos)
                 for k in ("sent", "uncached", "requests")}
            ratio = t["uncached"] / t["sent"] if t["sent"] else float("nan")
            print(f"{arm:17s} {who:8s}: per latent {t['requests'] / n:.1f} requests, sent {t['sent'] / n:,.0f}, "
                  f"uncached {t['uncached'] / n:,.0f} ({ratio:.3f} of sent)")


async def run_layout(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from autointerp.llm import ClientConfig, make_client

    data = load_run(args.source_run)
    rows = list(read_jsonl(args.source_run / "explanations.jsonl"))
    base = {r["feature"]: r["text"] for r in rows if r.get("baseline")}
    sel = [r for r in rows if r.get("selected") and r["feature"] in base]
    sel = sel[: args.max_features] if args.max_features else sel
    spec = args.llm or sel[0]["explainer"].split("[", 1)[-1].rstrip("]")
    client = make_client(spec, ClientConfig(cache=False, timeout_s=1800, max_concurrency=16, threads=args.threads))
    results["settings"].update(llm=spec)
    try:
        for r in sel:
            f = r["feature"]
            if all(a in results["latents"].get(f, {}) for a in LAYOUT_ARMS):
                continue
            rec = data.records[f]
            for arm in LAYOUT_ARMS:
                if arm in results["latents"].get(f, {}):
                    continue
                t = time.time()
                got = await detect_group(client, [r["text"], base[f]], [rec, rec], args.examples, False,
                                         examples_first=arm == "examples_first")
                results["latents"].setdefault(f, {})[arm] = {"label": got[0], "baseline": got[1]}
                args.out.write_text(json.dumps(results, indent=1))
                print(f"{f} {arm} done in {time.time() - t:.0f} s; load average {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source-run", type=Path, help="explain run whose selected labels are scored")
    ap.add_argument("--out", type=Path, required=True, help="results JSON (read back to resume)")
    ap.add_argument("--llm", default="", help="simulator and judge spec; default: the source run's explainer")
    ap.add_argument("--max-features", type=int, default=0, help="first N selected explanations (0: all)")
    ap.add_argument("--records", type=int, default=3, help="records of test_top and of test_random simulated")
    ap.add_argument("--examples", type=int, default=10, help="activating and non-activating detection examples")
    ap.add_argument("--latents-per-prompt", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--skip-simulation", action="store_true", help="grouping mode: detection only")
    ap.add_argument("--skip-detection", action="store_true", help="grouping mode: simulation only")
    ap.add_argument("--mode", choices=("grouping", "layout"), default="grouping",
                    help="grouping: records / latents per prompt; layout: examples before the explanation")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {"latents": {}, "settings": {}}
    if args.mode == "layout":
        if not args.report_only:
            if args.source_run is None:
                ap.error("--source-run is needed to score")
            results["settings"].update(examples=args.examples, examples_per_prompt=5, judge_probabilities=False)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
            asyncio.run(run_layout(args, results))
            print(f"load average after: {os.getloadavg()[0]:.2f}")
        report_layout(results)
        return
    if not args.report_only:
        if args.source_run is None:
            ap.error("--source-run is needed to score")
        results["settings"].update(
            records=args.records, records_per_prompt=args.records, examples=args.examples,
            latents_per_prompt=args.latents_per_prompt, examples_per_prompt=5, judge_probabilities=False,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        asyncio.run(run(args, results))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    report(results)


if __name__ == "__main__":
    main()
