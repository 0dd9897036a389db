"""Throughput of the full LLM client stack (openai SDK + retries + limiter + cache) against a loopback
OpenAI-compatible server with a fixed 100 ms latency.

1,000 chat requests at concurrency 32: ideal time 1000 / 32 * 0.1 s = 3.125 s; efficiency = ideal / time
(goal >= 0.9). Then the same 1,000 requests again with a fresh client on the warm cache: requests counted
at the server (goal 0) and wall time (goal < 2 s).

Reference arms in the same run: plain aiohttp under a semaphore (no SDK, no layers: what this server and
loopback can carry) and the bare openai SDK. The stack runs twice cold, on fresh cache files.

The server runs in a child process (its own event loop and CPU), so the client's overhead is what is
measured. Usage: .venv/bin/python benchmarks/bench_llm_concurrency.py [--requests N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing as mp
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from autointerp.llm import ChatMessage, ChatRequest, ClientConfig, make_client
from autointerp.llm.testing import FakeOpenAIServer


def serve(latency_s: float, port_q: mp.Queue, count_q: mp.Queue, stop_ev: object) -> None:  # type: ignore[type-arg]
    async def main() -> None:
        srv = FakeOpenAIServer(latency_s=latency_s)
        await srv.start()
        port_q.put(srv.port)
        while not stop_ev.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
        count_q.put(srv.requests)
        await srv.stop()

    asyncio.run(main())


async def run_batch(spec: str, cfg: ClientConfig, n: int) -> tuple[float, float, int, int]:
    """(wall s, client CPU s, requests sent, cache hits) for n distinct chat requests."""
    client = make_client(spec, cfg)
    reqs = [ChatRequest(messages=(ChatMessage("user", f"request {i}"),), max_tokens=8) for i in range(n)]
    await client.chat(ChatRequest(messages=(ChatMessage("user", "warm-up"),)))  # imports, first connection
    before = client.meter.total
    t0, c0 = time.perf_counter(), time.process_time()
    out = await asyncio.gather(*(client.chat(r) for r in reqs))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    await client.aclose()
    assert len(out) == n
    after = client.meter.total
    return dt, cpu, after.requests - before.requests, after.cache_hits - before.cache_hits


async def run_bare_sdk(base_url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Reference arm: the bare openai SDK (typed create(), SDK defaults, an asyncio.Semaphore), no cache."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="none", base_url=base_url, max_retries=0, timeout=30.0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with sem:
            r = await client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": f"bare {i}"}], max_tokens=8, temperature=0.0
            )
            return r.choices[0].message.content or ""

    await one(-1)
    t0, c0 = time.perf_counter(), time.process_time()
    out = await asyncio.gather(*(one(i) for i in range(n)))
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    await client.close()
    assert len(out) == n
    return dt, cpu


async def run_raw_aiohttp(base_url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Reference arm: plain aiohttp posts under an asyncio.Semaphore, JSON decoded, nothing else."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> object:
            async with sem:
                body = {"model": "fake", "messages": [{"role": "user", "content": f"raw {i}"}], "max_tokens": 8}
                async with session.post(f"{base_url}/chat/completions", json=body) as r:
                    return await r.json()

        await one(-1)
        t0, c0 = time.perf_counter(), time.process_time()
        out = await asyncio.gather(*(one(i) for i in range(n)))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(out) == n
    return dt, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.1)
    args = ap.parse_args()

    load0 = f"{os.getloadavg()[0]:.2f}"
    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    count_q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    proc = ctx.Process(target=serve, args=(args.latency, port_q, count_q, stop), daemon=True)
    proc.start()
    port = port_q.get(timeout=60)
    spec = f"openai-compatible:http://127.0.0.1:{port}/v1/fake"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ClientConfig(
            cache_path=Path(tmp) / "llm-cache.sqlite",
            max_concurrency=args.concurrency,
            timeout_s=30.0,
            requests_per_minute=1_000_000,
            tokens_per_minute=100_000_000,
        )
        base = f"http://127.0.0.1:{port}/v1"
        has_aiohttp = importlib.util.find_spec("aiohttp") is not None
        raw = asyncio.run(run_raw_aiohttp(base, args.requests, args.concurrency)) if has_aiohttp else None
        cold, cold_cpu, sent, _ = asyncio.run(run_batch(spec, cfg, args.requests))
        bare, bare_cpu = asyncio.run(run_bare_sdk(base, args.requests, args.concurrency))
        os.environ["AUTOINTERP_HTTP"] = "httpx"  # the stack on the SDK's default transport, own cache file
        hx, hx_cpu, hx_sent, _ = asyncio.run(
            run_batch(spec, replace(cfg, cache_path=Path(tmp) / "httpx.sqlite"), args.requests)
        )
        os.environ.pop("AUTOINTERP_HTTP")  # the stack as shipped (aiohttp transport when installed)
        raw2 = asyncio.run(run_raw_aiohttp(base, args.requests, args.concurrency)) if has_aiohttp else None
        cold2, cold2_cpu, sent_b, _ = asyncio.run(
            run_batch(spec, replace(cfg, cache_path=Path(tmp) / "second.sqlite"), args.requests)
        )
        warm, _, sent2, hits2 = asyncio.run(run_batch(spec, cfg, args.requests))
    stop.set()
    server_count = count_q.get(timeout=30)
    proc.join(10)

    ideal = args.requests / args.concurrency * args.latency
    transport = "aiohttp transport" if has_aiohttp else "httpx transport"
    ms = 1000 / args.requests
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    print(f"requests {args.requests}, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms")
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"cold, two runs: {cold:.3f} / {cold2:.3f} s (ideal {ideal:.3f} s) -> efficiency {ideal / cold:.3f} / "
        f"{ideal / cold2:.3f} (goal >= 0.9); sent {sent} / {sent_b}"
    )
    print(f"client CPU: {cold_cpu * ms:.2f} / {cold2_cpu * ms:.2f} ms per request ({transport})")
    if raw is not None and raw2 is not None:
        print(
            f"reference, plain aiohttp (no SDK, no layers): {raw[0]:.3f} / {raw2[0]:.3f} s -> efficiency "
            f"{ideal / raw[0]:.3f} / {ideal / raw2[0]:.3f}; CPU {raw[1] * ms:.2f} / {raw2[1] * ms:.2f} ms per request"
        )
        print(f"stack / plain aiohttp time: {cold / raw[0]:.3f} / {cold2 / raw2[0]:.3f}")
    print(
        f"reference, bare openai SDK: {bare:.3f} s -> efficiency {ideal / bare:.3f}; CPU {bare_cpu * ms:.2f} ms "
        "per request"
    )
    print(
        f"same stack on the httpx transport: {hx:.3f} s -> efficiency {ideal / hx:.3f}; CPU {hx_cpu * ms:.2f} ms "
        f"per request; sent {hx_sent}"
    )
    print(f"warm-cache rerun: {warm:.3f} s (goal < 2 s); sent {sent2}, cache hits {hits2}")
    expected = 3 * (args.requests + 1) + (1 if raw is None else 3) * (args.requests + 1)
    print(f"requests counted at the server: {server_count} (expected {expected}: 3 stack cold runs, the references)")


if __name__ == "__main__":
    main()
