r"""Issue #25: labels that carry their evidence. Explain the same seeded random latents of one sample with each
configuration (arm), and compare each arm's labels latent by latent with the shuffled baseline (the floor) and
the token-list yardstick (the no-LLM bar), both scored in the same run on the same records.

    .venv/bin/python benchmarks/bench_labels.py --sample-run SAMPLE --features random:25,min=20,seed=11 \
        --out OUT [--arms evidence-tokens,highlighted] [--report-only]

Each arm is one ``autointerp explain --sample-run SAMPLE`` run in ``OUT/<arm>`` with the main job's settings (8
top examples, 3 records per split, --no-calibrate) plus detection on 5 + 5 examples, and the arm's explainer
options (``ARMS``). A rerun resumes every arm; its wall time is kept in ``OUT/<arm>/bench.json``.

Printed per arm, paired by latent with bootstrap 95% CIs: the label's correlation gain over the shuffled baseline,
the label minus the yardstick, detection balanced accuracy against the shuffled baseline, the median label prior
correlation (how alike the simulations under the label and under a shuffled label are: near 1, the label is
ignored), which kind was selected, and the cost per latent (explainer and simulator requests and prompt tokens
sent, the selection split's simulations, seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from bench_prompt_grouping import paired_line

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--n-top-examples", "8", "--max-records-per-split", "3", "--no-calibrate", "--scorers",
          "simulation,detection", "--classifier-examples", "5"]
ARMS: dict[str, list[str]] = {
    "evidence-tokens": ["--explainer-kind", "evidence,tokens"],
    "evidence-tokens-refine": ["--explainer-kind", "evidence,tokens", "--refine"],
    "evidence": ["--explainer-kind", "evidence"],
    "highlighted": ["--explainer-kind", "highlighted"],
}


def run_arm(arm: str, sample: Path, features: str, out: Path) -> None:
    cmd = [str(ROOT / ".venv/bin/autointerp"), "explain", "--sample-run", str(sample), "--features", features,
           *COMMON, *ARMS[arm], "--run-dir", str(out / arm)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=False)
    seconds = time.perf_counter() - t0
    path = out / arm / "bench.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({"seconds": old.get("seconds", 0.0) + seconds, "command": cmd}))


def token_variant(run: Path, out: Path, n_tokens: int, context: bool) -> None:
    """A copy of ``run`` whose token-list yardstick is another token rule (``n_tokens`` tokens, with or without the
    preceding-token context), rescored: only the yardstick's simulations are sent, so the arm's label and baseline
    are paired with the variant on the same records. Reported like an arm (``--report-only --arms`` does not know
    it: its report is printed here)."""
    import asyncio
    import shutil
    from dataclasses import replace as dc_replace

    from autointerp.evidence import token_label
    from autointerp.explain import shown_evidence
    from autointerp.pipeline import ExplainConfig, run_score
    from autointerp.rundir import load_run, read_jsonl

    if not out.exists():
        shutil.copytree(run, out)
        data = load_run(out)
        cfg = ExplainConfig.from_dict(dict(data.manifest["config"]))
        settings = cfg.explainer_settings(cfg.explainer_kinds[0])
        texts = {}
        for f, record in data.records.items():
            ev = shown_evidence(record, settings)[1]
            if not context:
                ev = dc_replace(ev, tokens=tuple(dc_replace(t, before=None) for t in ev.tokens))
            texts[f"{f}#tokens"] = token_label(ev, n_tokens)
        for name in ("explanations.jsonl", "simulations.jsonl", "scores.jsonl"):
            rows = list(read_jsonl(out / name))
            keep = []
            for r in rows:
                eid = r.get("explanation_id")
                if eid in texts and name == "explanations.jsonl":
                    keep.append({**r, "text": texts[eid]})
                elif eid not in texts or name == "explanations.jsonl":
                    keep.append(r)
            (out / name).write_text("".join(json.dumps(r) + "\n" for r in keep))
    t0 = time.perf_counter()
    asyncio.run(run_score(out, "simulation"))
    (out / "bench.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "variant": [n_tokens, context]}))


def per_latent(run: Path) -> dict[str, dict[str, Any]]:
    """{feature: {corr/base/yard, det/det_base/det_yard, prior, kind, label, yardstick}} from the run's stored
    scores (plain simulation and detection judges)."""
    from autointerp.rundir import load_run

    data = load_run(run, records=False, simulations=False)
    out: dict[str, dict[str, Any]] = {}
    for f in data.features():
        sel, base, yard = data.selected(f), data.baseline(f), data.yardstick(f)
        row: dict[str, Any] = {"label": sel.text if sel else None, "yardstick": yard.text if yard else None,
                               "kind": sel.explainer.split("[")[0] + (",refined" if sel and sel.explainer.endswith(
                                   ",refined") else "") if sel else None}
        for key, e in (("", sel), ("_base", base), ("_yard", yard)):
            scores = data.scores_of(e)
            row["corr" + key] = scores["correlation"].value if "correlation" in scores else None
            row["det" + key] = scores["detection"].value if "detection" in scores else None
            if not key:
                prior = scores.get("label_prior_correlation")
                row["prior"] = prior.value if prior else None
        out[f] = row
    return out


def cost(run: Path, n: int) -> str:
    """Requests and prompt tokens sent per latent by role, the selection split's simulations per latent, seconds."""
    usage = json.loads((run / "usage.json").read_text()) if (run / "usage.json").exists() else {}
    parts = []
    for role in ("explainer", "simulator", "judge"):
        u = usage.get(role) or {}
        parts.append(f"{role} {u.get('requests', 0) / n:.1f} req, {u.get('prompt_tokens', 0) / n:,.0f} tok sent")
    from autointerp.rundir import read_jsonl

    valid = sum(1 for r in read_jsonl(run / "simulations.jsonl") if r.get("split") == "valid")
    bench = run / "bench.json"
    secs = json.loads(bench.read_text())["seconds"] / n if bench.exists() else float("nan")
    return "; ".join(parts) + f"; selection-split simulations {valid / n:.1f}; {secs:.0f} s per latent"


def report(out: Path, arms: list[str]) -> None:
    for arm in arms:
        run = out / arm
        if not (run / "scores.jsonl").exists():
            print(f"{arm}: no scores yet")
            continue
        lat = per_latent(run)
        done = [f for f, r in lat.items() if r["corr"] is not None or r["corr_base"] is not None]
        print(f"== {arm}: {len(lat)} latents ({len(done)} with a correlation)")
        rows = [lat[f] for f in lat]
        print("  " + paired_line("correlation, label vs shuffled baseline",
                                 [(r["corr_base"], r["corr"]) for r in rows], ("baseline", "label")))
        print("  " + paired_line("correlation, yardstick vs label", [(r["corr_yard"], r["corr"]) for r in rows],
                                 ("yardstick", "label")))
        print("  " + paired_line("correlation, yardstick vs shuffled baseline",
                                 [(r["corr_base"], r["corr_yard"]) for r in rows], ("baseline", "yardstick")))
        print("  " + paired_line("detection balanced accuracy, label vs shuffled baseline",
                                 [(r["det_base"], r["det"]) for r in rows], ("baseline", "label")))
        print("  " + paired_line("detection balanced accuracy, yardstick vs label",
                                 [(r["det_yard"], r["det"]) for r in rows], ("yardstick", "label")))
        priors = [r["prior"] for r in rows if r["prior"] is not None]
        med = f"{float(np.median(priors)):.2f}" if priors else "undefined"
        print(f"  median label prior correlation: {med} (n = {len(priors)})")
        print(f"  selected kinds: {dict(Counter(r['kind'] for r in rows))}")
        print(f"  cost per latent: {cost(run, max(1, len(lat)))}")
        print("  per latent (corr label / baseline / yardstick; detection label / baseline; prior; kind; label):")
        for f, r in lat.items():
            def v(x: float | None) -> str:
                return "  -  " if x is None else f"{x:+.2f}"

            print(f"    {f.rsplit(':', 1)[-1]:>5} {v(r['corr'])} {v(r['corr_base'])} {v(r['corr_yard'])} | "
                  f"{v(r['det'])} {v(r['det_base'])} | {v(r['prior'])} | {r['kind']} | {r['label']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample-run", type=Path)
    ap.add_argument("--features", default="random:25,min=20,seed=11")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arms", default="evidence-tokens")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--variant", metavar="N,CONTEXT", help="rescore a copy of the first arm with another token rule as "
                    "its yardstick, e.g. 8,1 (8 tokens, with context) or 5,0 (5 tokens, no context)")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm {unknown[0]}; use some of {', '.join(ARMS)}")
    if args.variant:
        n, ctx = (int(x) for x in args.variant.split(","))
        name = f"{arms[0]}-yardstick-{n}{'-context' if ctx else ''}"
        token_variant(args.out / arms[0], args.out / name, n, bool(ctx))
        ARMS[name] = []
        report(args.out, [name])
        return
    if not args.report_only:
        if args.sample_run is None:
            raise SystemExit("--sample-run is needed unless --report-only")
        for arm in arms:
            run_arm(arm, args.sample_run, args.features, args.out)
    report(args.out, arms)


if __name__ == "__main__":
    main()
