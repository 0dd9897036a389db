"""Detection balanced accuracy of a finished explain run's labels and shuffled baselines (issue #15's before and
after), and its judge's uncached prompt share (issue #12), on a copy of the run.

    .venv/bin/python benchmarks/bench_detection.py --run RUN --out COPY [--max 25] [--examples 5] \
        [--examples-first] [--pair OTHER_COPY]

RUN is copied to COPY (left as it is; a rerun with COPY present resumes it), then ``run_score(COPY, "detection",
settings=...)`` (what ``autointerp score`` runs) scores the selected label and the shuffled baseline of the first
``--max`` features by id that have both, with ``classifier_examples = --examples`` activating and as many
non-activating held-out examples (the run's own setting is delphi's 50 + 50: with 5 examples per prompt, 44
judge requests per latent, ~4 min of the embedded judge; ``classifier_examples`` is a record-choosing setting
that ``autointerp score`` does not change, so this driver sets it on a copy with no detection scores yet).
Prints the mean balanced accuracy of the labels and of the baselines with bootstrap 95% CIs and their paired
difference, the judge's prompt tokens and the share its backend did not serve from its cache, in all and apart
for the answer (chat) and the teacher-forced P(yes) (top_logprobs) requests, where P(yes) came from, and the
AUC of P(yes); with ``--pair``, the paired differences of the labels' balanced accuracy and AUC against another
copy. The layout is explicit: explanation first (autointerp's default) unless ``--examples-first``. autointerp's
response cache is off (``llm_cache = False``), so a copy scored again sends its requests to the judge rather
than reading old answers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from pathlib import Path

from bench_label_dependence import score_entries
from bench_prompt_grouping import paired_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def detection_values(run: Path, features: list[str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{metric: {feature: {"label": value, "baseline": value}}} from the run's detection scores of ``features``
    ("ba": the score's value, the balanced accuracy; "auc": ``details["metrics"]["auc"]``), read once."""
    out: dict[str, dict[str, dict[str, float | None]]] = {"ba": {}, "auc": {}}
    for feature, _name, _judge, baseline, sc in score_entries(run, ("detection",)):
        if feature in features:
            who = "baseline" if baseline else "label"
            out["ba"].setdefault(feature, {})[who] = sc.value
            out["auc"].setdefault(feature, {})[who] = sc.details.get("metrics", {}).get("auc")
    return out


def probability_sources(run: Path, features: list[str]) -> dict[str, int]:
    """Judge prompts by where their P(yes) came from (answer, teacher-forced), over these features' scores."""
    out: dict[str, int] = {}
    for feature, _name, _judge, _baseline, sc in score_entries(run, ("detection",)):
        if feature in features:
            for k, v in (sc.details.get("probability_source") or {"not recorded": 1}).items():
                out[k] = out.get(k, 0) + v
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max", type=int, default=25)
    ap.add_argument("--examples", type=int, default=5, help="activating and non-activating examples each")
    ap.add_argument("--examples-first", action="store_true", help="--judge-examples-first")
    ap.add_argument("--pair", type=Path, default=None, help="another copy scored the same way, to pair with")
    args = ap.parse_args()

    from autointerp.pipeline import run_score
    from autointerp.rundir import load_run, load_run_usage

    if not args.out.exists():
        shutil.copytree(args.run, args.out)
    data = load_run(args.out, simulations=False)
    feats = sorted((f for f in data.records if data.selected(f) and data.baseline(f)),
                   key=lambda f: int(f.rsplit(":", 1)[1]))[: args.max]
    before = load_run_usage(args.out).get("judge", {})
    t0 = time.time()
    settings = {"classifier_examples": args.examples, "judge_examples_first": args.examples_first,
                "llm_cache": False}
    asyncio.run(run_score(args.out, "detection", settings=settings, features=feats))
    after = load_run_usage(args.out).get("judge", {})
    print(f"detection of {len(feats)} latents ({args.examples} + {args.examples} examples, examples first: "
          f"{args.examples_first}) in {time.time() - t0:.0f} s")
    parts = [("all", after, before)] + [
        (kind, after.get("by_kind", {}).get(kind, {}), before.get("by_kind", {}).get(kind, {}))
        for kind in ("chat", "top_logprobs")]
    for name, a, b in parts:
        sent = a.get("prompt_tokens", 0) - b.get("prompt_tokens", 0)
        cached = a.get("cached_prompt_tokens", 0) - b.get("cached_prompt_tokens", 0)
        reqs = a.get("requests", 0) - b.get("requests", 0)
        if sent:
            print(f"judge {name:12s}: {reqs} requests, prompt tokens sent {sent:,}, served from the backend's "
                  f"cache {cached:,}; uncached share {(sent - cached) / sent:.3f}; per latent sent "
                  f"{sent / len(feats):,.0f}, uncached {(sent - cached) / len(feats):,.0f}")
    got = detection_values(args.out, feats)
    ba, auc = got["ba"], got["auc"]
    print(paired_line("detection balanced accuracy, shuffled baseline -> label",
                      [(ba.get(f, {}).get("baseline"), ba.get(f, {}).get("label")) for f in feats],
                      ("baseline", "label")))
    print(f"P(yes) of the judge prompts from: {probability_sources(args.out, feats)}")
    print(paired_line("detection AUC of P(yes), shuffled baseline -> label",
                      [(auc.get(f, {}).get("baseline"), auc.get(f, {}).get("label")) for f in feats],
                      ("baseline", "label")))
    if args.pair is not None:
        other = detection_values(args.pair, feats)
        for metric, what in (("auc", "AUC"), ("ba", "balanced accuracy")):
            print(paired_line(f"labels' {what}, {args.pair.name} -> {args.out.name}",
                              [(other[metric].get(f, {}).get("label"), got[metric].get(f, {}).get("label"))
                               for f in feats],
                              (args.pair.name, args.out.name)))

if __name__ == "__main__":
    main()
