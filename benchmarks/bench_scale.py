"""Scaling numbers: Ray overhead (2 shards vs one process) and memory at SAE scale (16,384 latents).

- ``ray``: ``autointerp sample`` on the embedded gemma3-270m, all 2,048 L6 MLP neurons, the same 20,000 wiki
  tokens (batches of 32 windows of 64 tokens): one process with 2 torch threads, then ``--executor ray
  --workers 2 --threads 1`` (2 shards on a local Ray cluster started in-process). Both are whole commands
  (subprocesses), timed end to end; the merged records are checked equal to the one-process records. On 2
  cores this measures overhead, not speed-up. Goal: Ray wall time at most 1.15x. ``--cluster`` adds the same
  2 shards on a local cluster already running (``ray start --head``; ``--ray-address auto``), then one
  process again.
- ``multihook``: L3, L6 and L9 MLP neurons of gemma3-270m (all 2,048 each) over the same ``--hook-tokens``
  wiki tokens: one pass with the 3 hooks, one pass with L9 alone, and L3 and L6 alone, all in one process
  (``run_sampling``, 2 threads), timed by wall clock. Goal: the 3-hook pass at most 1.3x the L9 pass.
- ``memory``: a random-weight dense ReLU SAE with 16,384 latents at L6/resid_post of gemma3-270m
  (``sources.sae.random_sae``), every latent sampled over ``--sae-tokens`` tokens in a fresh process; then,
  in two more fresh processes, all records read at once (``load_feature_records``) vs streamed 1,024 features
  at a time (``iter_feature_records``). Peak RSS is the kernel's high-water mark (``VmHWM``).

    flock /tmp/autointerp-heavy.lock .venv/bin/python benchmarks/bench_scale.py [--only ray|multihook|memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE = ["--model", "gemma3-270m", "--hook", "L6/mlp_neurons", "--tokens", "20000", "--batch-size", "32",
          "--window", "64", "--checkpoint-every", "1000"]


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cli(args: list[str]) -> float:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "autointerp", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _reused(run: Path) -> str:
    """How many shards of ``run`` sampled with the job their worker's input check had prepared."""
    flags = [json.loads(w.read_text()).get("reused_checked_job") for w in sorted(run.glob("shards/*/worker.json"))]
    return f"{sum(bool(f) for f in flags)} of {len(flags)} shards reused their worker's checked job"


def bench_ray(tmp: Path, cluster: bool = False) -> None:
    one = _cli(["sample", *SAMPLE, "--threads", "2", "--run-dir", str(tmp / "one")])
    ray = _cli(["sample", *SAMPLE, "--threads", "1", "--executor", "ray", "--workers", "2",
                "--run-dir", str(tmp / "ray")])
    from autointerp.record_store import read_arrays

    a, b = read_arrays(tmp / "one"), read_arrays(tmp / "ray")
    same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    print(f"ray: one process (2 threads) {one:.1f} s; 2 Ray shards (1 thread each) {ray:.1f} s; "
          f"ratio {ray / one:.3f} (goal <= 1.15); merged records equal: {same}; {_reused(tmp / 'ray')}")
    if not cluster:
        return
    # The same 2 shards on a local Ray cluster that is already running (``ray start --head``, started before
    # the clock and stopped after it), joined with --ray-address auto: what a cluster user pays per command.
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)  # let the cluster's start-up finish before the clock starts
        joined = _cli(["sample", *SAMPLE, "--threads", "1", "--executor", "ray", "--workers", "2",
                       "--ray-address", "auto", "--run-dir", str(tmp / "ray-cluster")])
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c = read_arrays(tmp / "ray-cluster")
    same_c = a.keys() == c.keys() and all(np.array_equal(a[k], c[k]) for k in a)
    one2 = _cli(["sample", *SAMPLE, "--threads", "2", "--run-dir", str(tmp / "one-again")])
    print(f"ray, running local cluster (--ray-address auto): {joined:.1f} s; one process again {one2:.1f} s; "
          f"ratio to the mean one-process time {joined / ((one + one2) / 2):.3f}; merged records equal: {same_c}; "
          f"{_reused(tmp / 'ray-cluster')}")


def bench_multihook(tmp: Path, tokens: int) -> None:
    import torch

    from autointerp.corpus import load_corpus
    from autointerp.hooks import HookPoint
    from autointerp.sampling import SamplingConfig, run_sampling
    from autointerp.sources.neurons import neuron_source
    from autointerp.subject import load_subject

    torch.set_num_threads(2)
    subject = load_subject("gemma3-270m", threads=2)
    hooks = [HookPoint(layer, "mlp_neurons") for layer in (3, 6, 9)]
    sources = [neuron_source(subject.name, h, subject.hook_dim(h)) for h in hooks]
    cfg = SamplingConfig(tokens=tokens, checkpoint_every=1000)

    def timed(name: str, src: object) -> float:
        windows = load_corpus("wiki", subject.tokenizer, cfg.window, max_tokens=cfg.tokens, seed=0)
        t0 = time.perf_counter()
        run_sampling(subject, src, windows, cfg, tmp / name)  # type: ignore[arg-type]
        return time.perf_counter() - t0

    timed("warmup", sources[0])  # first-use costs (allocator, tokenizer) out of the timed runs
    t9 = timed("l9", sources[2])
    t3 = timed("all3", sources)
    t_3 = timed("l3", sources[0])
    t_6 = timed("l6", sources[1])
    print(f"multihook: {tokens:,} tokens; L9 alone {t9:.1f} s; L3+L6+L9 in one pass {t3:.1f} s (ratio {t3 / t9:.2f}, "
          f"goal <= 1.3); three single passes {t_3 + t_6 + t9:.1f} s (L3 {t_3:.1f}, L6 {t_6:.1f}, L9 {t9:.1f})")


def _child_sample(out: str, tokens: int) -> None:
    import torch

    from autointerp.corpus import load_corpus
    from autointerp.hooks import HookPoint
    from autointerp.sampling import SamplingConfig, run_sampling
    from autointerp.sources.sae import random_sae
    from autointerp.subject import load_subject

    torch.set_num_threads(2)
    subject = load_subject("gemma3-270m", threads=2)
    hook = HookPoint(6, "resid_post")
    sae = random_sae(hook, subject.d_model, 16_384, seed=0, model_name="gemma3-270m")
    cfg = SamplingConfig(tokens=tokens, checkpoint_every=1000)
    windows = load_corpus("wiki", subject.tokenizer, cfg.window, max_tokens=cfg.tokens, seed=0)
    t0 = time.perf_counter()
    res = run_sampling(subject, sae, windows, cfg, Path(out))
    print(json.dumps({"peak_rss_mb": _vmhwm_mb(), "seconds": time.perf_counter() - t0, "tokens": res.n_tokens,
                      "features": res.n_features, "dead": res.n_dead}))


def _child_read(out: str, mode: str) -> None:
    from autointerp.record_store import iter_feature_records, load_feature_records

    t0 = time.perf_counter()
    n = 0
    if mode == "all":
        n = len(load_feature_records(Path(out)))
    else:
        for chunk in iter_feature_records(Path(out)):
            n += len(chunk)
    print(json.dumps({"peak_rss_mb": _vmhwm_mb(), "seconds": time.perf_counter() - t0, "records": n}))


def _child(args: list[str]) -> dict[str, float]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, env=env, capture_output=True,
                         text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def bench_memory(tmp: Path, tokens: int) -> None:
    run = str(tmp / "sae16k")
    s = _child(["sample", run, str(tokens)])
    print(f"memory: sampling 16,384 random latents over {s['tokens']:.0f} tokens: peak RSS {s['peak_rss_mb']:.0f} MB "
          f"({s['seconds']:.0f} s, {s['dead']:.0f} dead)")
    size = sum(f.stat().st_size for f in (Path(run) / "records").iterdir()) / 2**20
    a = _child(["read", run, "all"])
    b = _child(["read", run, "stream"])
    print(f"memory: records store {size:.0f} MB on disk; reading all {a['records']:.0f} records at once: peak RSS "
          f"{a['peak_rss_mb']:.0f} MB ({a['seconds']:.1f} s); streamed 1,024 at a time: {b['peak_rss_mb']:.0f} MB "
          f"({b['seconds']:.1f} s)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, out, arg = sys.argv[2:5]
        if kind == "sample":
            _child_sample(out, int(arg))
        else:
            _child_read(out, arg)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["ray", "multihook", "memory"])
    ap.add_argument("--cluster", action="store_true",
                    help="ray: also 2 shards on an already running local Ray cluster (--ray-address auto)")
    ap.add_argument("--sae-tokens", type=int, default=4096)
    ap.add_argument("--hook-tokens", type=int, default=8192)
    args = ap.parse_args()
    print(f"load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="autointerp-bench-scale-") as tmp:
        if args.only in (None, "ray"):
            bench_ray(Path(tmp), args.cluster)
        if args.only in (None, "multihook"):
            bench_multihook(Path(tmp), args.hook_tokens)
        if args.only in (None, "memory"):
            bench_memory(Path(tmp), args.sae_tokens)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
