"""Reference for bench_llm_concurrency.py: 1,000 requests at concurrency 32 against the same 100 ms fake
server with plain aiohttp (no openai SDK, no autointerp layers), to tell the server's limit from the client's.

    .venv/bin/python benchmarks/bench_llm_raw_http.py
"""

import asyncio
import multiprocessing as mp
import sys
import time

sys.path.insert(0, "benchmarks")
import aiohttp
from bench_llm_concurrency import serve


async def run(port, n=1000, c=32):
    sem = asyncio.Semaphore(c)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:

        async def one(i):
            async with sem:
                async with s.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "fake", "messages": [{"role": "user", "content": f"raw {i}"}], "max_tokens": 8},
                ) as r:
                    return await r.json()

        await one(-1)
        t0 = time.perf_counter()
        c0 = time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0, time.process_time() - c0


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    pq, cq, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    p = ctx.Process(target=serve, args=(0.1, pq, cq, stop), daemon=True)
    p.start()
    port = pq.get()
    for _ in range(2):
        dt, cpu = asyncio.run(run(port))
        print(f"raw aiohttp: {dt:.3f} s, efficiency {3.125 / dt:.3f}, client CPU {cpu:.2f} s")
    stop.set()
    p.join(5)
