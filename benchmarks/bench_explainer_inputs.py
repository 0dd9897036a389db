r"""Issue #15 item 4: do the explainer's extra inputs help a small explainer? Explain the same latents of one
sample with the default prompt and with each addition, and compare the scores latent by latent.

    .venv/bin/python benchmarks/bench_explainer_inputs.py --sample-run SAMPLE --features random:25,min=20,seed=1 \
        --out OUT [--arms default,token-stats,trim] [--subtract-prior]

Each arm is one ``autointerp explain --sample-run SAMPLE`` run in ``OUT/<arm>`` with the main job's settings
(highlighted explainer, 8 top examples, 3 records per split, shuffled baseline) plus the arm's flags:

- ``default``: nothing more;
- ``token-stats``: ``--token-stats 10`` (the most often marked tokens with counts, tokens by summed activation);
- ``trim``: ``--trim-examples 4`` (each example cut to its marked tokens and 4 tokens of context a side).

``--extra`` adds options to the arms other than ``default``: with ``--no-baseline --no-calibrate`` an arm
costs a quarter of the requests and gives the label's correlation only (no gain, no label prior); the
correlation scores do not read the calibration records. A rerun resumes every arm. The report prints, per
arm against ``default`` and paired by latent, the correlation of the label, its gain over the shuffled
baseline, and the label prior correlation, with bootstrap 95% CIs (``bench_label_dependence.per_latent``);
with ``--subtract-prior`` the runs are scored that way too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from bench_label_dependence import gain, per_latent
from bench_prompt_grouping import paired_line

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"default": [], "token-stats": ["--token-stats", "10"], "trim": ["--trim-examples", "4"]}
MAIN_JOB = ["--explainer-kind", "highlighted", "--n-top-examples", "8", "--max-records-per-split", "3"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample-run", type=Path, required=True)
    ap.add_argument("--features", default="random:25,min=20,seed=1")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--subtract-prior", action="store_true")
    ap.add_argument("--extra", default="", help="more explain options for the arms other than default, e.g. "
                    "'--no-baseline --no-calibrate' (the label's correlation only: a quarter of the requests)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm {unknown[0]}; use some of {', '.join(ARMS)}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for arm in [] if args.report_only else arms:
        cmd = [str(ROOT / ".venv/bin/autointerp"), "explain", "--sample-run", str(args.sample_run), "--features",
               args.features, *MAIN_JOB, *ARMS[arm], "--run-dir", str(args.out / arm)]
        if args.subtract_prior:
            cmd.append("--subtract-prior")
        if arm != "default":
            cmd += args.extra.split()
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
        print(f"{arm}: rc {rc}, {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
    setting = "prior-subtracted" if args.subtract_prior else "plain"
    rows = {arm: per_latent(args.out / arm).get(setting, {}) for arm in arms if (args.out / arm).exists()}
    base = rows.get("default", {})
    for arm, feats in rows.items():
        if arm == "default":
            continue
        both = sorted(base.keys() & feats.keys())

        for what, get in (("correlation of the label", lambda r: r.get("label")), ("gain over the baseline", gain),
                          ("label prior correlation", lambda r: r.get("label_prior"))):
            print(paired_line(f"{arm} vs default ({setting}): {what}",
                              [(get(base[f]), get(feats[f])) for f in both], ("default", arm)))


if __name__ == "__main__":
    main()
