"""Prefix reuse of the local llama.cpp backend: per-query time of 1-token queries that share a long
(~1,500-token) prompt prefix with the previous query, against cold queries (a prefix not in the KV cache).

Arms are interleaved (cold, warm x k, cold, warm x k, ...) so load changes on a shared machine hit both.
Also times one ``top_logprobs`` request with many positions over the same prompt (per position).

Usage: .venv/bin/python benchmarks/bench_llm_prefix.py [--model qwen2.5-coder-1.5b] [--rounds 2] [--warm 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from autointerp.errors import UserError
from autointerp.llm import ClientConfig, CompletionRequest, TopLogprobsRequest, make_client

WORDS = (
    "river city music film king queen north south played wrote built named called known first second "
    "largest small large old new born died war peace book song red green blue black white"
).split()


def make_prefix(seed: int, lines: int) -> str:
    """A simulator-like prompt: one "token<TAB>value" line per token; ``seed`` changes its first line."""
    head = f"Document {seed}: predict the activation (0-9) of each token.\n"
    body = "".join(f"{WORDS[(i * 7 + seed) % len(WORDS)]}\t{(i * 3) % 10}\n" for i in range(lines))
    return head + body


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="embedded model; falls back to smollm2-135m")
    ap.add_argument("--lines", type=int, default=370, help="prefix lines (~4 tokens each)")
    ap.add_argument("--rounds", type=int, default=2, help="cold queries (each followed by --warm warm ones)")
    ap.add_argument("--warm", type=int, default=4)
    ap.add_argument("--positions", type=int, default=16, help="positions in the top_logprobs request")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ClientConfig(cache=False, threads=args.threads, timeout_s=900, cache_path=Path(tmp) / "c.sqlite")
        model = args.model
        try:
            client = make_client(f"local:{model}", cfg)
        except UserError as e:
            print(f"{model} unavailable ({e}); using smollm2-135m")
            model = "smollm2-135m"
            client = make_client(f"local:{model}", cfg)
        load0 = os.getloadavg()[0]
        await client.complete(CompletionRequest(prompt="Hello", max_tokens=1))  # load the model
        cold: list[float] = []
        warm: list[float] = []
        prompt_tokens = 0
        for r in range(args.rounds):
            prefix = make_prefix(r + 1, args.lines)
            t0 = time.perf_counter()
            resp = await client.complete(CompletionRequest(prompt=prefix + "city\t", max_tokens=1))
            cold.append(time.perf_counter() - t0)
            prompt_tokens = resp.usage.prompt_tokens
            for w in range(args.warm):
                t0 = time.perf_counter()
                await client.complete(CompletionRequest(prompt=prefix + f"{WORDS[w]} {WORDS[w + 1]}\t", max_tokens=1))
                warm.append(time.perf_counter() - t0)
        # one top_logprobs request: positions after each of the last lines' tab
        prefix = make_prefix(99, args.lines)
        tabs = [i + 1 for i, ch in enumerate(prefix) if ch == "\t"][-args.positions :]
        t0 = time.perf_counter()
        lp = await client.top_logprobs(TopLogprobsRequest(prompt=prefix, positions=tuple(tabs), top_k=10))
        t_lp = time.perf_counter() - t0
        assert len(lp.logprobs) == len(tabs)
        await client.aclose()

    cm, wm = statistics.median(cold), statistics.median(warm)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, llama.cpp threads {args.threads}")
    print(f"load average before/after: {load0:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"model local:{model}; prefix {prompt_tokens} prompt tokens")
    print(f"cold query (new prefix): median {cm:.3f} s over {len(cold)}: {[round(x, 3) for x in cold]}")
    print(f"warm query (shared prefix): median {wm:.3f} s over {len(warm)}: {[round(x, 3) for x in warm]}")
    print(f"speed-up warm vs cold: {cm / wm:.1f}x")
    print(
        f"top_logprobs with {len(tabs)} positions on a new {args.lines}-line prompt: {t_lp:.3f} s "
        f"({t_lp / len(tabs):.3f} s per position, the first one paying the prefix)"
    )


if __name__ == "__main__":
    asyncio.run(main())
