"""Time the README's main job: sample gemma3-270m MLP neurons, explain + simulate + score them with the
embedded Qwen2.5-Coder-1.5B, all local. Goal: under 15 minutes on a 2-core machine.

    .venv/bin/python benchmarks/bench_main_job.py [--run-dir DIR] [--features 0-4]

Prints the command, the wall time, the load average before/after (the machine may be shared), and the
run's summary table (the CLI's own output).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main_job_command(run_dir: Path, features: str) -> list[str]:
    exe = str(Path(sys.executable).with_name("autointerp"))
    return [
        exe, "explain", "--model", "gemma3-270m", "--hook", "L6/mlp_neurons", "--features", features,
        "--tokens", "20000", "--window", "32", "--explainer-kind", "highlighted", "--n-top-examples", "8",
        "--max-records-per-split", "3", "--run-dir", str(run_dir),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, default=None, help="run directory (default: a new temporary folder)")
    ap.add_argument("--features", default="0-4")
    ap.add_argument("--threads", type=int, default=0, help="pass --threads N (default: the CLI's default)")
    ap.add_argument("--keep", action="store_true", help="resume an existing run dir instead of starting fresh")
    args = ap.parse_args()
    if args.run_dir is None:
        if args.keep:
            ap.error("--keep resumes a run: give its --run-dir")
        args.run_dir = Path(tempfile.mkdtemp(prefix="autointerp-main-job-"))
    elif not args.keep:
        shutil.rmtree(args.run_dir, ignore_errors=True)
    cmd = main_job_command(args.run_dir, args.features)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print("command: autointerp " + " ".join(cmd[1:]), flush=True)
    load0 = os.getloadavg()
    t = time.time()
    rc = subprocess.run(cmd, env=env).returncode
    dt = time.time() - t
    load1 = os.getloadavg()
    print(f"\nexit {rc}; wall time {dt / 60:.1f} min; load average before {load0[0]:.1f}, after {load1[0]:.1f}")


if __name__ == "__main__":
    main()
