"""Sampler memory does not grow with the corpus: peak RSS of a sampling run at N vs 10N tokens.

Each run is a separate subprocess (fresh allocator): load the subject model, then reset the kernel's peak-RSS
counter (``/proc/self/clear_refs``), run ``run_sampling`` over all features, and read the peak (``VmHWM``; a
20 ms polling thread as a cross-check). Reports the peak RSS of the whole process and the peak increase over
the RSS right before sampling, for N and 10N tokens, and their ratios (goal: <= 1.1).

    .venv/bin/python benchmarks/bench_memory.py [--model smollm2-135m] [--hook L6/mlp_neurons] [--tokens 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(model: str, hook: str, tokens: int, threads: int) -> None:
    import torch

    from autointerp.corpus import load_corpus
    from autointerp.hooks import HookPoint
    from autointerp.sampling import SamplingConfig, _State, run_sampling
    from autointerp.sources.neurons import NeuronSource
    from autointerp.subject import load_subject

    torch.set_num_threads(threads)
    subject = load_subject(model, threads=threads)
    hp = HookPoint.parse(hook)
    source = NeuronSource(model, hp, subject.hook_dim(hp))
    cfg = SamplingConfig(tokens=tokens, batch_size=16)
    windows = load_corpus("wiki", subject.tokenizer, cfg.window, max_tokens=tokens)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _status("VmRSS")
    peak_poll = [before]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak_poll[0] = max(peak_poll[0], _status("VmRSS"))
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_sampling(subject, source, windows, cfg, Path(tmp))
        secs = time.perf_counter() - t0
        records_bytes = sum(p.stat().st_size for p in (Path(tmp) / "records").iterdir())
    stop.set()
    th.join()
    hwm = _status("VmHWM")
    print(json.dumps({
        "tokens": res.n_tokens,
        "features": res.n_features,
        "rss_before": before,
        "peak_hwm": hwm if reset else None,
        "peak_poll": peak_poll[0],
        "state_bytes": _State(range(res.n_features), cfg, torch.device("cpu")).nbytes(),
        "records_bytes": records_bytes,
        "seconds": secs,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", default="L6/mlp_neurons")
    ap.add_argument("--tokens", type=int, default=2000, help="N; the second run uses 10N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.hook, args.tokens, args.threads)
        return
    out = {}
    for n in (args.tokens, 10 * args.tokens):
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--hook", args.hook, "--tokens", str(n),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1 / 2**20
    print(f"{args.model} {args.hook}, all features, separate processes:")
    for r in out.values():
        peak = r["peak_hwm"] or r["peak_poll"]
        print(f"  {r['tokens']:>7} tokens: peak RSS {peak * mib:7.1f} MiB (poll {r['peak_poll'] * mib:.1f}), "
              f"before sampling {r['rss_before'] * mib:.1f} MiB, increase {(peak - r['rss_before']) * mib:.1f} MiB, "
              f"state {r['state_bytes'] * mib:.1f} MiB, records {r['records_bytes'] * mib:.1f} MiB, "
              f"{r['seconds']:.0f} s")
    a, b = out[args.tokens], out[10 * args.tokens]
    pa, pb = a["peak_hwm"] or a["peak_poll"], b["peak_hwm"] or b["peak_poll"]
    print(f"  peak RSS ratio 10N/N: {pb / pa:.3f}; peak increase ratio: "
          f"{(pb - b['rss_before']) / max(1, pa - a['rss_before']):.3f}")


if __name__ == "__main__":
    main()
