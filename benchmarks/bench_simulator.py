"""Simulator throughput vs the raw forward pass of the same model on the same prompts.

    .venv/bin/python benchmarks/bench_simulator.py [--model transformers:smollm2-135m] [--records 16] [--repeats 3]

Arm "simulate": LogprobSimulator over N 64-token records through the transformers backend (all slots of a
record from one forward pass; concurrent requests micro-batched by 8). Arm "raw": the same prompt texts,
tokenized and run through ``model(**inputs)`` in padded batches of 8, nothing else. Both arms are
interleaved, repeated, and the median ratio (raw time / simulate time = simulated tok/s over raw tok/s,
in record tokens) is reported. Goal: >= 0.8.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


async def main() -> None:
    import torch

    from autointerp.llm.base import ClientConfig
    from autointerp.llm.factory import make_client
    from autointerp.prompts import load_template
    from autointerp.simulate import LogprobSimulator, build_all_at_once_prompt

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="transformers:smollm2-135m")
    ap.add_argument("--records", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    client = make_client(args.model, ClientConfig(threads=args.threads, cache=False, timeout_s=600))
    backend = client.backend
    model, tok = backend.model, backend.tokenizer  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    words = [" the", " city", " of", " river", " born", " in", " music", ",", ".", " and", " was", " Paris"]
    records = [[str(w) for w in rng.choice(words, 64)] for _ in range(args.records)]
    explanation = "names of cities"
    template = load_template("simulate_all_at_once.j2")
    prompts = [build_all_at_once_prompt(template, explanation, r).text for r in records]
    n_tokens = sum(len(r) for r in records)

    failed: list[int] = []

    async def sim_arm() -> float:
        sim = LogprobSimulator(client, explanation)
        t = time.perf_counter()
        out = await asyncio.gather(*(sim.simulate(r) for r in records))
        dt = time.perf_counter() - t
        failed.append(sum(not s.ok for s in out))
        return dt

    def raw_arm() -> float:
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(prompts), 8):
                enc = tok(prompts[i : i + 8], return_tensors="pt", padding=True)
                model(**enc)
        return time.perf_counter() - t

    await sim_arm()  # warm-up
    raw_arm()
    ratios, sims, raws = [], [], []
    for _ in range(args.repeats):
        s = await sim_arm()
        r = raw_arm()
        sims.append(s)
        raws.append(r)
        ratios.append(r / s)
    await client.aclose()
    prompt_tokens = len(tok(prompts[0])["input_ids"])
    print(
        f"model={args.model} records={args.records} x 64 tokens, prompt ~{prompt_tokens} tokens, threads={args.threads}"
    )
    print(f"simulate: {n_tokens / statistics.median(sims):.1f} simulated tok/s (median of {args.repeats})")
    print(f"raw forward: {n_tokens / statistics.median(raws):.1f} record tok/s on the same prompts")
    print(f"simulations failed (low digit mass): {failed[-1]} of {args.records} in the last run")
    print(f"ratio simulate/raw: median {statistics.median(ratios):.2f} (runs: {', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    asyncio.run(main())
