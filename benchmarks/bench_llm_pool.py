"""Endpoint pool throughput and failover on loopback: 3 fake endpoints at 100 ms latency against 1.

    .venv/bin/python benchmarks/bench_llm_pool.py [--requests 3000] [--per-endpoint 16] [--latency 0.1]

Each fake endpoint runs in its own process (so the servers do not share the client's CPU thread), and a
killed endpoint is a terminated process (its connections reset). Three runs, each with a fresh client and
the response cache off:
1. one endpoint, ``--llm-concurrency`` = per-endpoint concurrency;
2. a pool of 3 endpoints, each with that concurrency (the pool's client allows 3x in flight);
3. the same pool with one endpoint killed after 1/3 of the requests have been answered.
Prints requests/s, the ratio pool/single (goal >= 0.85 x 3), and for the failover run: answers lost,
duplicated or wrong (against the one-endpoint run), and its wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from autointerp.llm import ChatMessage, ChatRequest, ClientConfig, make_client
from autointerp.llm.testing import FakeOpenAIServer


def _serve(latency: float, port_out: Any) -> None:
    async def main() -> None:
        srv = await FakeOpenAIServer(latency_s=latency).start()
        port_out.put(srv.port)
        await asyncio.Event().wait()

    asyncio.run(main())


class Endpoint:
    """A fake endpoint in a child process."""

    def __init__(self, latency: float) -> None:
        q: Any = mp.get_context("spawn").Queue()
        self.proc = mp.get_context("spawn").Process(target=_serve, args=(latency, q), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{q.get(timeout=60)}"

    async def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


def _req(i: int) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", f"request {i}"),), max_tokens=8)


async def run(spec: str, n: int, concurrency: int, tmp: Path, kill: Endpoint | None) -> tuple[list[str], float]:
    client = make_client(spec, ClientConfig(cache=False, max_concurrency=concurrency, timeout_s=30, backoff_s=0.05))
    done = 0

    async def one(i: int) -> str:
        nonlocal done
        r = await client.chat(_req(i))
        done += 1
        if kill is not None and done == n // 3:
            await kill.stop()
        return r.text

    t = time.perf_counter()
    out = await asyncio.gather(*(one(i) for i in range(n)))
    dt = time.perf_counter() - t
    await client.aclose()
    return list(out), dt


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--per-endpoint", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.1)
    args = ap.parse_args()
    n, c = args.requests, args.per_endpoint
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        single = Endpoint(args.latency)
        expected, t1 = await run(f"openai-compatible:{single.url}/v1/m", n, c, tmp, None)
        await single.stop()
        print(f"1 endpoint,  concurrency {c}: {n} requests in {t1:.2f} s = {n / t1:.1f} req/s")
        servers = [Endpoint(args.latency) for _ in range(3)]
        spec = "openai-compatible:" + ",".join([f"{s.url}/v1" for s in servers[:-1]] + [f"{servers[-1].url}/v1/m"])
        got, t3 = await run(spec, n, c, tmp, None)
        print(f"3 endpoints, concurrency {c} each: {n} requests in {t3:.2f} s = {n / t3:.1f} req/s")
        print(f"pool / single throughput: {t1 / t3:.2f} (goal >= {0.85 * 3:.2f}); answers equal: {got == expected}")
        for s in servers:
            await s.stop()
        servers = [Endpoint(args.latency) for _ in range(3)]
        spec = "openai-compatible:" + ",".join([f"{s.url}/v1" for s in servers[:-1]] + [f"{servers[-1].url}/v1/m"])
        got, tf = await run(spec, n, c, tmp, servers[1])
        lost = sum(1 for g in got if not g)
        wrong = sum(1 for g, e in zip(got, expected, strict=True) if g != e)
        dup = len(got) - len(set(got))
        print(
            f"failover (endpoint 2 killed after {n // 3} answers): {n} requests in {tf:.2f} s = {n / tf:.1f} req/s; "
            f"lost {lost}, duplicated {dup}, wrong {wrong}"
        )
        for s in servers:
            await s.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
