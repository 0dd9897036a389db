"""Prompt tokens of the README's main job, counted three ways: at a logging proxy, by the llama.cpp server's
own counter of evaluated tokens, and in the run's usage.json. They must agree.

    flock /tmp/autointerp-heavy.lock .venv/bin/python benchmarks/bench_token_accounting.py \
        [--code DIR] [--records RECORDS.jsonl] [--run-dir DIR]

One in-process llama.cpp server (Qwen2.5-Coder-1.5B, 2 threads, one slot, prompt cache, /metrics on) sits
behind a logging proxy on loopback; the main job runs as a subprocess with ``--explainer`` and
``--simulator`` set to ``openai-compatible:<proxy>/v1/qwen`` (the same llama.cpp path as ``local:``) and
``--no-cache``; its other arguments are those of scripts/quickstart.sh (``--sae gemma3-270m/L6 --features
random:5,min=20,seed=0 --tokens 20000 --window 32 --explainer-kind highlighted --n-top-examples 8
--max-records-per-split 3``; with the calibration records, which the main job skips since 2026-11-30 with
``--no-calibrate``: the ``--code`` of earlier versions has no such option). The job's wall time is printed,
split at the first LLM request the proxy sees (before it: start-up and sampling; after it: explain, simulate,
score). ``--code DIR`` runs the CLI of another
checkout (e.g. the code before issue 16), so before/after use the same server, proxy and counting; with
``--records`` (e.g. the after run's records.jsonl) it samples nothing, so both explain the same records.

The proxy counts, per role (chat requests: explainer; /v1/completions: simulator), every prompt token it
forwards: each prompt of a multi-prompt request is tokenized by the server's ``/tokenize`` (Qwen adds no
BOS), chat prompts by the server's reported usage (one prompt per request, chat template included).
``/tokenize`` calls of the client itself are counted apart (they evaluate nothing). The server's
``llamacpp:prompt_tokens_total`` (tokens it evaluated, cache reads excluded) is read before and after; the
explainer's share is the sum of its chat answers' ``timings.prompt_n``, the simulator's the rest.

After the run, the simulation prompts of every simulated record are rebuilt from the run directory and
tokenized, to give the prompt tokens per latent of each backend path for 6 records (test_top + test_random
at --max-records-per-split 3): prefix list (llama.cpp), one prompt per record (echo / prompt_logprobs),
and the JSON simulator's chat prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from autointerp.llm.testing import HTTPReply, LoopbackHTTPServer, serving_in_thread


class CountingProxy(LoopbackHTTPServer):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.sent: dict[str, int] = {"explainer": 0, "simulator": 0}
        self.reported: dict[str, int] = {"explainer": 0, "simulator": 0}
        """Prompt tokens the server's answers report (what a client that trusts the report records)."""
        self.requests: dict[str, int] = {"explainer": 0, "simulator": 0, "tokenize": 0, "other": 0}
        self.chat_evaluated = 0
        """Prompt tokens the server evaluated for chat requests (the sum of its ``timings.prompt_n``)."""
        self.first_llm_request: float | None = None
        """time.time() when the first chat or completion request arrived (the end of sampling)."""
        self._client: httpx.AsyncClient | None = None

    async def _count_tokens(self, text: str) -> int:
        assert self._client is not None
        r = await self._client.post(self.upstream + "/tokenize", json={"content": text})
        return len(r.json()["tokens"])

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=3600)
        if self.first_llm_request is None and path.endswith("/completions"):
            self.first_llm_request = time.time()
        fwd = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
        r = await self._client.request(method, self.upstream + path, content=body, headers=fwd)
        if path.endswith("/chat/completions"):
            self.requests["explainer"] += 1
            if r.status_code == 200:
                self.sent["explainer"] += int(r.json()["usage"]["prompt_tokens"])
                self.reported["explainer"] += int(r.json()["usage"]["prompt_tokens"])
                self.chat_evaluated += int(r.json().get("timings", {}).get("prompt_n", 0))
        elif path.endswith("/completions"):
            self.requests["simulator"] += 1
            req = json.loads(body)
            prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
            for p in prompts:
                self.sent["simulator"] += await self._count_tokens(p)
            if r.status_code == 200:
                self.reported["simulator"] += int(r.json().get("usage", {}).get("prompt_tokens", 0))
        elif path.endswith("/tokenize"):
            self.requests["tokenize"] += 1
        else:
            self.requests["other"] += 1
        return HTTPReply(r.status_code, r.content, {"Content-Type": r.headers.get("content-type", "application/json")})


def evaluated_total(base: str) -> int:
    text = httpx.get(base + "/metrics", timeout=30).text
    m = re.search(r"^llamacpp:prompt_tokens_total\s+([0-9.e+]+)", text, re.M)
    assert m, "no llamacpp:prompt_tokens_total in /metrics"
    return int(float(m.group(1)))


def start_server(threads: int, llm: str) -> tuple[Any, str]:
    import xllamacpp

    from autointerp import embedded
    from autointerp.llm.local import free_port

    p = xllamacpp.CommonParams()
    p.model.path = str(embedded.gguf_path(llm))
    port = free_port()
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_ctx = 8192
    p.n_parallel = 1
    p.n_threads_http = 64
    p.cache_prompt = True
    p.endpoint_metrics = True
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.verbosity = -1
    p.warmup = False
    return xllamacpp.Server(p), f"http://127.0.0.1:{port}"


def path_tokens(run_dir: Path, base: str) -> dict[str, float]:
    """Prompt tokens per latent of each simulation path, for the 6 test records of each explained latent."""
    from autointerp.records import FeatureRecord

    records = {}
    for line in (run_dir / "records.jsonl").read_text().splitlines():
        if line.strip():
            rec = FeatureRecord.from_json(json.loads(line))
            records[str(rec.id)] = rec
    labels = {}
    for line in (run_dir / "explanations.jsonl").read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("selected") and not row.get("baseline"):
            labels[row["feature"]] = row["text"]
    return path_tokens_of([records[f] for f in labels], [labels[f] for f in labels], base)


def path_tokens_of(records: list[Any], labels: list[str] | str, base: str) -> dict[str, float]:
    """Prompt tokens per latent of each simulation path for the 6 test records of each of ``records``."""
    from autointerp.estimate import NoClient
    from autointerp.prompts import load_template
    from autointerp.simulate import JsonSimulator, build_all_at_once_prompt

    if isinstance(labels, str):
        labels = [labels] * len(records)
    template = load_template("simulate_all_at_once.j2")
    totals = {"prefix-list": 0, "one prompt per record": 0, "json": 0}
    with httpx.Client(timeout=600) as http:

        def count(text: str) -> int:
            return len(http.post(base + "/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"])

        for rec, label in zip(records, labels, strict=True):
            for r in [*rec.test_top[:3], *rec.test_random[:3]]:
                prompt = build_all_at_once_prompt(template, label, r.tokens)
                pieces = http.post(base + "/tokenize", json={"content": prompt.text, "with_pieces": True}).json()
                ends, acc = [], 0
                for t in pieces["tokens"]:
                    acc += len(t["piece"].encode() if isinstance(t["piece"], str) else bytes(t["piece"]))
                    ends.append(acc)
                for slot in prompt.slots:
                    totals["prefix-list"] += bisect.bisect_right(ends, len(prompt.text[:slot].encode()))
                totals["one prompt per record"] += len(ends)
                chat = JsonSimulator(NoClient(), label)  # builds prompts, sends nothing
                totals["json"] += count("\n".join(m.content for m in chat.build_request(r.tokens).messages))
    n = max(1, len(labels))
    return {k: v / n for k, v in totals.items()} | {"latents": float(len(labels))}


def simulate_only(args: argparse.Namespace, spec: str, proxy: CountingProxy, base: str) -> None:
    """Simulate the test records of --records under one label through the proxy, in this process (no
    explainer); compares the proxy, the server's counter and the client's usage meter."""
    from autointerp.llm import ClientConfig, make_client
    from autointerp.records import FeatureRecord
    from autointerp.simulate import LogprobSimulator

    rows = [json.loads(x) for x in args.records.read_text().splitlines() if x.strip()]
    records = [FeatureRecord.from_json(r) for r in rows]

    async def go() -> Any:
        client = make_client(spec, ClientConfig(cache=False, timeout_s=1800, max_concurrency=16))
        strategy = await client.settle_logprob_strategy()
        sim = LogprobSimulator(client, args.simulate_only)
        texts = [r.tokens for rec in records for r in [*rec.test_top[:3], *rec.test_random[:3]]]
        sims = await asyncio.gather(*(sim.simulate(t) for t in texts))
        await client.aclose()
        return client.meter.total, strategy, len(texts), sum(s.expected is not None for s in sims)

    ev0 = evaluated_total(base)
    t = time.time()
    used, strategy, n, ok = asyncio.run(go())
    evaluated = evaluated_total(base) - ev0
    print(f"simulated {n} records ({ok} ok) under {args.simulate_only!r} with {strategy} in {time.time() - t:.0f} s")
    sent, reported = proxy.sent["simulator"], proxy.reported["simulator"]
    print(f"simulator prompt tokens: proxy sent {sent:,}; the server's answers report {reported:,}")
    u = used
    print(f"usage meter: prompt {u.prompt_tokens:,}, cached {u.cached_prompt_tokens:,}, requests {u.requests}")
    ev, why = used.evaluated_prompt_tokens()
    print(f"evaluated: server counter {evaluated:,}; usage meter prompt - cached {ev if ev is not None else why}")
    paths = path_tokens_of(records, args.simulate_only, base)
    print(f"prompt tokens per latent, 6 records, by path: {json.dumps(paths)}")


def judge_only(args: argparse.Namespace, spec: str, proxy: CountingProxy, base: str) -> None:
    """Detection and fuzzing (default settings: up to 50 + 50 examples, 5 per prompt) of --records under one
    label through the proxy: prompt tokens sent and evaluated per latent."""
    from autointerp.llm import ClientConfig, make_client
    from autointerp.records import FeatureRecord
    from autointerp.score import ClassifierSettings, DetectionScorer, FuzzingScorer

    rows = [json.loads(x) for x in args.records.read_text().splitlines() if x.strip()]
    records = [FeatureRecord.from_json(r) for r in rows]

    async def go() -> Any:
        client = make_client(spec, ClientConfig(cache=False, timeout_s=1800, max_concurrency=16))
        for rec in records:
            for cls in (DetectionScorer, FuzzingScorer):
                await cls(client, ClassifierSettings(judge_probabilities=False)).score(args.simulate_only, rec)
        await client.aclose()
        return client.meter.total

    ev0 = evaluated_total(base)
    t = time.time()
    used = asyncio.run(go())
    evaluated = evaluated_total(base) - ev0
    n = max(1, len(records))
    print(f"detection + fuzzing of {len(records)} latent(s) in {time.time() - t:.0f} s, {used.requests} requests")
    print(f"judge prompt tokens: proxy sent {proxy.sent['explainer']:,}; usage meter {used.prompt_tokens:,}")
    ev, why = used.evaluated_prompt_tokens()
    print(f"evaluated: server counter {evaluated:,}; usage meter prompt - cached {ev if ev is not None else why}")
    print(f"per latent: sent {used.prompt_tokens / n:,.0f}, uncached {evaluated / n:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", type=Path, default=Path.cwd(), help="checkout whose CLI runs the job")
    ap.add_argument("--features", default="random:5,min=20,seed=0", help="the main job's latents (its rule)")
    ap.add_argument("--tokens", default="20000", help="corpus tokens sampled (the main job's 20,000)")
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/autointerp-token-bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llm", default="qwen2.5-coder-1.5b", help="embedded GGUF served (explainer and simulator)")
    ap.add_argument("--records", type=Path, help="records.jsonl to explain (copied into the run dir); no sampling")
    ap.add_argument("--simulate-only", metavar="LABEL", help="no CLI run: simulate --records' test records under LABEL")
    ap.add_argument("--judge-only", action="store_true", help="with --simulate-only's LABEL: detection + fuzzing")
    ap.add_argument("--paths-only", type=Path, metavar="RUN_DIR", help="no CLI run: tokens per path, RUN_DIR labels")
    ap.add_argument("--timeout-s", default="1800", help="--timeout-s of the job (one slot serves 16 in flight)")
    args = ap.parse_args()
    shutil.rmtree(args.run_dir, ignore_errors=True)
    server, base = start_server(args.threads, args.llm)
    print(f"llm: {args.llm} behind llama.cpp, {args.threads} threads, one slot")
    with serving_in_thread(CountingProxy(base)) as proxy:
        run_job(args, proxy, base)
    del server


def run_job(args: argparse.Namespace, proxy: CountingProxy, base: str) -> None:
    """The measured job (or one of the --*-only parts) against the counting proxy in front of the server."""
    spec = f"openai-compatible:{proxy.url}/v1/qwen"
    if args.paths_only:
        print(f"prompt tokens per latent, 6 records, by path: {json.dumps(path_tokens(args.paths_only, base))}")
        return
    if args.simulate_only and args.judge_only:
        judge_only(args, spec, proxy, base)
        return
    if args.simulate_only:
        simulate_only(args, spec, proxy, base)
        return
    source = ["--sae", "gemma3-270m/L6", "--tokens", args.tokens, "--window", "32"]
    if args.records:  # a run dir holding only records.jsonl is explained as it is (no sampling)
        args.run_dir.mkdir(parents=True)
        shutil.copy(args.records, args.run_dir / "records.jsonl")
        source = []
    cmd = [
        sys.executable, "-m", "autointerp", "explain", *source, "--features", args.features,
        "--explainer-kind", "highlighted", "--n-top-examples", "8", "--max-records-per-split", "3",
        "--run-dir", str(args.run_dir), "--explainer", spec, "--simulator", spec, "--no-cache",
        "--threads", str(args.threads), "--timeout-s", args.timeout_s,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(args.code), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rev = subprocess.run(["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"code: {args.code} ({rev.stdout.strip()})")
    print("command: autointerp " + " ".join(cmd[3:]), flush=True)
    ev0 = evaluated_total(base)
    load0 = os.getloadavg()
    t = time.time()
    rc = subprocess.run(cmd, env=env, cwd="/tmp").returncode
    dt = time.time() - t
    evaluated = evaluated_total(base) - ev0
    load1 = os.getloadavg()
    print(f"exit {rc}; main job wall time {dt:.0f} s ({dt / 60:.1f} min)")
    if proxy.first_llm_request is not None:
        before_llm = proxy.first_llm_request - t
        print(f"  start-up + sampling (to the first LLM request) {before_llm:.0f} s; ", end="")
        print(f"LLM stages {dt - before_llm:.0f} s")
    print(f"load average (1, 5, 15 min) before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, ", end="")
    print(f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    usage = json.loads((args.run_dir / "usage.json").read_text())
    print(f"proxy requests: {proxy.requests}")
    # the server evaluates one request at a time (one slot): its counter minus the chat answers' prompt_n is
    # what the simulator's requests cost it
    server_ev = {"explainer": proxy.chat_evaluated, "simulator": evaluated - proxy.chat_evaluated}
    head = f"{'role':<10} {'proxy: sent':>12} {'server reports':>15} {'server evaluated':>17}"
    print(f"{head} {'usage.json: prompt':>19} {'usage.json: cached':>19} {'usage.json: prompt - cached':>28}")
    for role in ("explainer", "simulator"):
        u = usage.get(role, {})
        cached = u.get("cached_prompt_tokens")
        rec_ev = f"{int(u.get('prompt_tokens', 0)) - int(cached):,}" if cached is not None else "-"
        row = f"{role:<10} {proxy.sent[role]:>12,} {proxy.reported[role]:>15,} {server_ev[role]:>17,}"
        print(f"{row} {u.get('prompt_tokens', 0):>19,} {cached if cached is not None else '-':>19} {rec_ev:>28}")
    recorded = sum(int(usage.get(r, {}).get("prompt_tokens", 0)) for r in ("explainer", "simulator"))
    reads = [usage.get(r, {}).get("cached_prompt_tokens") for r in ("explainer", "simulator")]
    uncached = recorded - sum(int(c or 0) for c in reads) if all(c is not None for c in reads) else None
    print(f"server evaluated (llamacpp:prompt_tokens_total): {evaluated:,}; usage.json prompt - cached: {uncached}")
    print(f"prompt tokens per latent, 6 records, by path: {json.dumps(path_tokens(args.run_dir, base))}")


if __name__ == "__main__":
    main()
