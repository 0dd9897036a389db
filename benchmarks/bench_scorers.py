"""Input- and output-side scorers on the embedded default: scores, agreement, cost, vocab explainer, hard negatives.

Run by hand, under the team's heavy lock, in chunks (every stage resumes from its run directory):

    flock /tmp/autointerp-heavy.lock .venv/bin/python benchmarks/bench_scorers.py --out DIR --budget-s 840

Stages, in order (a stage that would start after ``--budget-s`` is left for the next invocation):

1. ``sample``: the embedded SAE gemma3-270m/L6 over ``--tokens`` tokens of the embedded Wikipedia corpus, for
   the 5 latents documented in datasets/labelled plus random latents (seeded); the first ``--n-random`` of
   them that fired become the benchmark's feature set.
2. ``explain``: run A, the default explainer (highlighted, Qwen2.5-Coder-1.5B); run B, the same explainer
   also shown the vocabulary projection (``--show-vocab``). Both with the shuffled baseline and the
   model-only scorers (embedding, surprisal, intervention_kl).
3. ``model``: the model-only scorers (``--model-scorers``) on explained latents the explain stage left
   unscored; ``hard``: ``--hard-scorers`` again with hard negatives (run A).
4. ``judged``: the LLM-judged scorers on run A (``--judged``, default detection,intervention) with small
   example counts.
5. ``report``: per-latent scores, the Spearman agreement matrix across latents, cost per latent per
   scorer (requests, prompt tokens, seconds, from each score's details.cost), the paired difference B - A
   with a bootstrap CI per score, random vs hard negatives; written to DIR/bench_scorers.json and printed.

Nothing here is asserted: numbers are reported in benchmarks/README.md with the machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

DOCUMENTED = [542, 624, 1030, 1285, 1744]
"""The 5 latents of the main job (`random:5,min=20,seed=0` on the embedded SAE v2), as in datasets/labelled.
The runs reported in benchmarks/README.md before 2026-11-30 used v1 and its curated 140, 364, 1325, 1836, 1743."""
NO_JUDGE = "embedding,surprisal,intervention_kl"

log = logging.getLogger("bench_scorers")


def _features(args: argparse.Namespace) -> list[int]:
    rng = np.random.default_rng(args.seed)
    pool = [int(i) for i in rng.permutation(2048) if int(i) not in DOCUMENTED]
    return DOCUMENTED + pool[: 3 * args.n_random]


def stage_sample(args: argparse.Namespace) -> None:
    from autointerp.sampling import SamplingConfig, SamplingSetup, prepare_sampling

    out = args.out / args.sample
    if (out / "records" / "meta.json").exists():
        return
    setup = SamplingSetup(sae="gemma3-270m/L6", corpus="wiki", threads=args.threads)
    job = prepare_sampling(setup, SamplingConfig(tokens=args.tokens, features=tuple(_features(args))))
    job.run(out)


def _records(args: argparse.Namespace) -> list[Any]:
    from autointerp.record_store import load_feature_records

    recs = load_feature_records(args.out / args.sample)
    live = [r for r in recs if not r.dead and len(r.train) >= 3 and r.test_top]
    docs = [r for r in live if r.id.index in DOCUMENTED]
    rand = [r for r in live if r.id.index not in DOCUMENTED][: args.n_random]
    return docs + rand


def _config(args: argparse.Namespace, **kw: Any) -> Any:
    from autointerp.pipeline import ExplainConfig

    base = ExplainConfig(
        explainer_kind="highlighted",
        n_top_examples=10,
        scorers=NO_JUDGE,
        vocab_projection=10,
        classifier_examples=args.examples,
        examples_per_prompt=5,
        steer_prompts=args.steer_prompts,
        steer_new_tokens=10,
        threads=args.threads,
        concurrency=1,
    )
    return replace(base, **kw)


def _models(args: argparse.Namespace) -> Any:
    from autointerp.scorers.base import Models

    return Models(threads=args.threads)


def stage_explain(args: argparse.Namespace, models: Any) -> None:
    from autointerp.pipeline import run_explain

    records = _records(args)
    for name, show in (("A-default", False), ("B-vocab", True)):
        if name not in args.explain_runs.split(","):
            continue
        t = time.perf_counter()
        asyncio.run(run_explain(_config(args, show_vocab=show), args.out / name, records, models=models))
        log.info("explain %s: %.0f s", name, time.perf_counter() - t)


def stage_hard(args: argparse.Namespace, models: Any) -> None:
    from autointerp.pipeline import run_score

    settings = {"negatives": "hard"}
    asyncio.run(run_score(args.out / "A-default", args.hard_scorers, models=models, settings=settings))


def stage_model(args: argparse.Namespace, models: Any) -> None:
    """The model-only scorers (``--model-scorers``) on every explained latent of run A, with the baseline: for
    latents explained by a chunk that ended before the explain run scored them."""
    from autointerp.pipeline import run_score

    feats = [str(r.id) for r in _records(args)]
    asyncio.run(run_score(args.out / "A-default", args.model_scorers, models=models, features=feats))


def _judged_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The judged scorers' smaller sizes (selected labels only: no shuffled baseline)."""
    return {"classifier_examples": args.judged_examples, "examples_per_prompt": args.judged_per_prompt,
            "max_records_per_split": args.sim_records, "baseline": False}


def stage_judged(args: argparse.Namespace, models: Any, start: float) -> None:
    """Feature by feature (documented first, then random, in the sample's order): the judged scorers with
    random negatives, then detection with hard negatives; stops at ``--budget-s`` (scores are kept; a rerun
    resumes)."""
    from autointerp.pipeline import open_clients, run_score

    run = args.out / "A-default"

    async def go() -> None:
        clients, to_close = open_clients(_config(args))
        try:
            for r in _records(args):
                if time.perf_counter() - start > args.budget_s:
                    log.info("budget spent: judged scorers stop before %s", r.id)
                    return
                t = time.perf_counter()
                f = [str(r.id)]
                await run_score(run, args.judged, clients=clients, models=models, settings=_judged_settings(args),
                                features=f)
                if args.hard_judged:
                    hard = {**_judged_settings(args), "negatives": "hard"}
                    await run_score(run, args.hard_judged, clients=clients, models=models, settings=hard, features=f)
                log.info("judged %s: %.0f s", r.id, time.perf_counter() - t)
        finally:
            for c in to_close:
                await c.aclose()

    asyncio.run(go())


def _table(run_dir: Path) -> dict[str, dict[str, Any]]:
    """feature -> {label: value, label+'/baseline': value, label+'/cost': cost} from a run directory."""
    from autointerp.rundir import load_run

    data = load_run(run_dir, records=False)
    out: dict[str, dict[str, Any]] = {}
    for f in data.features():
        row: dict[str, Any] = {}
        for group, e in (("", data.selected(f)), ("/baseline", data.baseline(f))):
            for label, sc in data.scores_of(e).items():
                row[label + group] = sc.value
                if not group:
                    row[label + "/cost"] = sc.details.get("cost")
                    if sc.value is None:
                        row[label + "/reason"] = sc.reason
        sel = data.selected(f)
        row["explanation"] = sel.text if sel is not None else None
        out[f] = row
    return out


def _spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _paired(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], name: str, seed: int = 0) -> dict[str, Any]:
    d = [b[f][name] - a[f][name] for f in a if f in b and a[f].get(name) is not None and b[f].get(name) is not None]
    if not d:
        return {"n": 0, "mean": None, "reason": "no feature scored in both runs"}
    rng = np.random.default_rng(seed)
    arr = np.asarray(d)
    boots = arr[rng.integers(0, len(arr), size=(2000, len(arr)))].mean(axis=1)
    ci = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    return {"n": len(d), "mean": float(arr.mean()), "ci95": ci}


def stage_report(args: argparse.Namespace) -> dict[str, Any]:
    from autointerp.scorers.registry import HARD

    a = _table(args.out / "A-default")
    b = _table(args.out / "B-vocab") if (args.out / "B-vocab" / "scores.jsonl").exists() else {}
    labels = sorted({k for row in a.values() for k in row if "/" not in k and k != "explanation"})
    agreement: dict[str, dict[str, float | None]] = {}
    for x in labels:
        agreement[x] = {}
        for y in labels:
            pairs = [(r[x], r[y]) for r in a.values() if r.get(x) is not None and r.get(y) is not None]
            agreement[x][y] = _spearman([p for p, _ in pairs], [q for _, q in pairs])
    cost: dict[str, dict[str, float]] = {}
    for x in labels:
        cs = [r[x + "/cost"] for r in a.values() if r.get(x + "/cost")]
        if cs:
            cost[x] = {k: float(np.mean([c[k] for c in cs])) for k in ("requests", "prompt_tokens", "seconds")}
    means = {
        x: {
            "explained": float(np.mean(v)) if (v := [r[x] for r in a.values() if r.get(x) is not None]) else None,
            "baseline": float(np.mean(w)) if (w := [r[x + "/baseline"] for r in a.values()
                                                    if r.get(x + "/baseline") is not None]) else None,
            "n": len(v),
        }
        for x in labels
    }
    # B's labels may lack the judge suffix A's carry (A was also scored with hard negatives): pair by short name
    by_short = {f: {_short(k): v for k, v in row.items() if "/" not in k} for f, row in b.items()}
    a_short = {f: {_short(k): v for k, v in row.items() if "/" not in k} for f, row in a.items()}
    paired = {x: _paired(a_short, by_short, x) for x in HEADLINE} if b else {}
    hard = {x: _paired({f: {"v": r.get(x[: -len(HARD)])} for f, r in a.items()},
                       {f: {"v": r.get(x)} for f, r in a.items()}, "v")
            for x in labels if x.endswith(HARD)}
    result = {"features": a, "vocab_run": b, "agreement_spearman": agreement, "cost_per_latent": cost,
              "means": means, "paired_vocab_minus_default": paired,
              "paired_hard_minus_random": hard, "load": os.getloadavg()}
    (args.out / "bench_scorers.json").write_text(json.dumps(result, indent=1, default=str))
    return result


HEADLINE = ("correlation", "detection", "fuzzing", "embedding", "surprisal", "intervention", "intervention_kl",
            "intervention_logit_shift")
"""The scores of the per-latent table and the agreement matrix (random negatives), input side first."""


def _short(label: str) -> str:
    """``detection@<judge>+hard-negatives`` -> ``detection (hard)``; ``embedding@<model>`` -> ``embedding``."""
    from autointerp.scorers.registry import HARD

    name = label.split("@", 1)[0]
    return name + " (hard)" if label.endswith(HARD) else name


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(res: dict[str, Any]) -> str:
    """The benchmark's tables as markdown (for benchmarks/README.md)."""
    feats = res["features"]
    labels = sorted({k for row in feats.values() for k in row if "/" not in k and k != "explanation"})
    by_short = {_short(x): x for x in labels}
    cols = [c for c in HEADLINE if c in by_short] + sorted(c for c in by_short if c.endswith("(hard)"))
    out = ["| latent | label | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for f, row in feats.items():
        label = (row.get("explanation") or "").replace("|", "/")[:60]
        out.append(f"| {f.rsplit(':', 1)[-1]} | {label} | " + " | ".join(_fmt(row.get(by_short[c])) for c in cols)
                   + " |")
    out += ["", "Agreement (Spearman across latents; n latents with both scores):", "",
            "| | " + " | ".join(c for c in cols if "(hard)" not in c) + " |",
            "|---|" + "---|" * len([c for c in cols if "(hard)" not in c])]
    for x in (c for c in cols if "(hard)" not in c):
        cells = []
        for y in (c for c in cols if "(hard)" not in c):
            n = sum(1 for r in feats.values() if r.get(by_short[x]) is not None and r.get(by_short[y]) is not None)
            rho = res["agreement_spearman"][by_short[x]][by_short[y]]
            cells.append(f"{_fmt(rho)} ({n})")
        out.append(f"| {x} | " + " | ".join(cells) + " |")
    out += ["", "| scorer | latents | requests | prompt tokens | seconds |", "|---|---|---|---|---|"]
    for x in cols:
        c = res["cost_per_latent"].get(by_short[x])
        n = sum(1 for r in feats.values() if r.get(by_short[x] + "/cost"))
        if c:
            out.append(f"| {x} | {n} | {c['requests']:.1f} | {c['prompt_tokens']:.0f} | {c['seconds']:.1f} |")
    out += ["", "| score | n | mean explained | mean baseline |", "|---|---|---|---|"]
    for x in cols:
        m = res["means"][by_short[x]]
        out.append(f"| {x} | {m['n']} | {_fmt(m['explained'])} | {_fmt(m['baseline'])} |")
    pairs = (("vocab - default", "paired_vocab_minus_default"), ("hard - random", "paired_hard_minus_random"))
    for title, key in pairs:
        out += ["", f"| paired {title} | n | mean | 95% CI |", "|---|---|---|---|"]
        for x, d in res[key].items():
            ci = d.get("ci95")
            out.append(f"| {_short(x)} | {d['n']} | {_fmt(d.get('mean'))} | "
                       + (f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else d.get("reason", "-")) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokens", type=int, default=20_000)
    p.add_argument("--n-random", type=int, default=20, help="random live latents beside the 5 documented ones")
    p.add_argument("--examples", type=int, default=10, help="activating and non-activating examples each")
    p.add_argument("--steer-prompts", type=int, default=4)
    p.add_argument("--sample", default="sample", help="sample directory under --out")
    p.add_argument("--explain-runs", default="A-default,B-vocab", help="explain runs: A-default, B-vocab")
    p.add_argument("--judged", default="simulation,detection,fuzzing,intervention")
    p.add_argument("--hard-judged", default="detection", help="judged scorers also run with hard negatives")
    p.add_argument("--hard-scorers", default="embedding", help="model-only scorers also run with hard negatives")
    p.add_argument("--judged-examples", type=int, default=5,
                   help="judged scorers: activating and non-activating examples each")
    p.add_argument("--judged-per-prompt", type=int, default=5, help="judged scorers: examples per judge prompt")
    p.add_argument("--sim-records", type=int, default=2, help="simulation: records per scored split")
    p.add_argument("--model-scorers", default="embedding,intervention_kl",
                   help="stage model: model-only scorers run on every explained latent")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=840.0, help="start no stage after this many seconds")
    p.add_argument("--stages", default="sample,explain,hard,judged,report")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    models = _models(args)
    stages = {"sample": lambda: stage_sample(args), "explain": lambda: stage_explain(args, models),
              "model": lambda: stage_model(args, models), "hard": lambda: stage_hard(args, models),
              "judged": lambda: stage_judged(args, models, start)}
    for name in args.stages.split(","):
        if name == "report":
            continue
        if time.perf_counter() - start > args.budget_s:
            log.info("budget spent: stage %s left for the next run", name)
            break
        t = time.perf_counter()
        stages[name]()
        log.info("stage %s: %.0f s (load %s)", name, time.perf_counter() - t, os.getloadavg())
    if "report" in args.stages:
        res = stage_report(args)
        (args.out / "bench_scorers.md").write_text(markdown(res))
        keys = ("means", "cost_per_latent", "paired_vocab_minus_default", "paired_hard_minus_random", "load")
    print(json.dumps({k: res[k] for k in keys},
                         indent=1, default=str))


if __name__ == "__main__":
    main()
