"""Feature-source costs: opening a Gemma Scope params.npz lazily vs reading it whole, and encoding all latents vs
a feature subset vs a TopK SAE, on a synthetic SAE of Gemma-2-2B size (d_in 2304, 16k latents).

    .venv/bin/python benchmarks/bench_sources.py [--d-in 2304] [--width 16384] [--tokens 4096] [--repeats 3]

Both arms of each comparison run interleaved on the same inputs; ratios are the numbers to read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from autointerp.sources.formats import load_sae


def _timeit(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--subset", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, n = args.d_in, args.width
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.npz"
        w_enc = (rng.standard_normal((d, n), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
        np.savez(
            path,
            W_enc=w_enc,
            W_dec=np.ascontiguousarray(w_enc.T),
            b_enc=np.zeros(n, np.float32),
            b_dec=np.zeros(d, np.float32),
            threshold=np.full(n, 0.5, np.float32),
        )
        del w_enc
        size_mb = path.stat().st_size / 1e6
        x = torch.from_numpy(rng.standard_normal((args.tokens, d), dtype=np.float32))
        feats = sorted(rng.choice(n, size=args.subset, replace=False).tolist())

        open_lazy, open_full = [], []
        for _ in range(args.repeats):
            open_lazy.append(_timeit(lambda: load_sae(path, hook="L20/resid_post")))
            open_full.append(_timeit(lambda: dict(np.load(path))))

        sae = load_sae(path, hook="L20/resid_post")
        first_subset = _timeit(lambda: sae.encode(x[:16], features=feats))  # reads only 100 columns
        sae.encode(x[:16])  # materialise the full encoder once
        dense, subset = [], []
        for _ in range(args.repeats):
            dense.append(_timeit(lambda: sae.encode(x)))
            subset.append(_timeit(lambda: sae.encode(x, features=feats)))

        topk = load_sae(path, hook="L20/resid_post")
        topk.activation, topk.k = "topk", 64
        topk.encode(x[:16])
        topk_t = [_timeit(lambda: topk.encode(x)) for _ in range(args.repeats)]

    med = statistics.median
    print(
        f"synthetic Gemma Scope SAE: d_in {d}, {n} latents, params.npz {size_mb:.0f} MB; {args.tokens} tokens, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    print(f"open lazily (headers, mmap)      {med(open_lazy) * 1e3:9.1f} ms")
    ratio = med(open_full) / med(open_lazy)
    print(f"np.load every array              {med(open_full) * 1e3:9.1f} ms   ratio {ratio:.0f}x")
    print(f"first subset encode (16 tokens, {args.subset} cols, cold)  {first_subset * 1e3:.1f} ms")
    print(f"encode all latents               {args.tokens / med(dense):9.0f} tok/s")
    print(
        f"encode {args.subset} latents              {args.tokens / med(subset):9.0f} tok/s   "
        f"speed-up {med(dense) / med(subset):.1f}x"
    )
    print(f"encode TopK(64) -> TopKActs      {args.tokens / med(topk_t):9.0f} tok/s")


if __name__ == "__main__":
    main()
