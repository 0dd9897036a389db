"""LLM client stack against fake loopback servers through the real openai SDK: specs, keys, retries and
faults, cache, coalescing, settings immutability, usage and cost."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from llm_fixtures import fast_config

from autointerp.errors import UserError
from autointerp.llm import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TopLogprobsRequest,
    UsageMeter,
    make_client,
)
from autointerp.llm.cache import ResponseCache, request_key
from autointerp.llm.errors import map_exception, parse_retry_after
from autointerp.llm.factory import split_base_url, split_spec
from autointerp.llm.openai_backend import align_prompt_logprobs, parse_top_logprobs
from autointerp.llm.testing import FakeOpenAIServer, FaultKind, FaultProxy
from autointerp.llm.usage import PriceTable
from autointerp.records import Usage

FAKE_KEY = "sk-FAKE-SECRET-0123456789abcdef"


def chat(text: str, temperature: float = 0.0, **kw: Any) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", text),), temperature=temperature, **kw)


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# -- specs and keys ---------------------------------------------------------------------------------


def test_spec_parsing() -> None:
    assert split_spec("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert split_base_url("http://127.0.0.1:8080/v1/qwen", "s") == ("http://127.0.0.1:8080/v1", "qwen")
    assert split_base_url("https://openrouter.ai/api/v1/meta-llama/llama-3.1-8b", "s") == (
        "https://openrouter.ai/api/v1",
        "meta-llama/llama-3.1-8b",
    )
    assert split_base_url("http://host:9000/qwen", "s") == ("http://host:9000", "qwen")
    for bad in ("gpt-4o", "nope:model", "openai:", "openai-compatible:127.0.0.1/model"):
        with pytest.raises(UserError):
            make_client(bad)


def test_missing_key_is_a_user_error_at_build_time(no_keys: None, tmp_path: Path) -> None:
    import autointerp.llm  # noqa: F401  (importing needs no key)

    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        make_client("openai:gpt-4o-mini", fast_config(tmp_path))
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        make_client("anthropic:claude-3-5-haiku-latest", fast_config(tmp_path))


def test_key_from_keys_file(no_keys: None, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"openai": "sk-from-file"}')
    from dataclasses import replace

    client = make_client("openai:gpt-4o-mini", replace(fast_config(tmp_path), api_keys_file=keys))
    assert client.spec == "openai:gpt-4o-mini"


async def test_vllm_missing_is_a_user_error(tmp_path: Path) -> None:
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"pip install autointerp\[vllm\]"):
        make_client("vllm:Qwen/Qwen2.5-0.5B", fast_config(tmp_path))


# -- basic requests through the real openai SDK ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["openai", "llamacpp"])
async def test_chat_complete_logprobs_fake_server(tmp_path: Path, fmt: Any) -> None:
    async with FakeOpenAIServer(logprobs_format=fmt) as srv:
        assert isinstance(srv, FakeOpenAIServer)
        client = make_client(f"openai-compatible:{srv.url}/v1/fake", fast_config(tmp_path))
        r = await client.chat(chat("hello there", temperature=0.5))
        assert r.text == "t=0.5 hello there" and r.usage.requests == 1 and r.usage.prompt_tokens > 0
        assert r.logprobs == [] and "logprobs" not in srv.bodies[-1]
        r = await client.chat(chat("hello [1, 0]", top_logprobs=2))
        assert "".join(t.token for t in r.logprobs) == r.text == "t=0.0 hello [1, 0]"
        assert r.logprobs[0].top == {"a0": -1.0, "a1": -2.0} and srv.bodies[-1]["top_logprobs"] == 2
        cached = await client.chat(chat("hello [1, 0]", top_logprobs=2))  # from the response cache
        assert cached.cached and cached.logprobs == r.logprobs
        r = await client.complete(CompletionRequest(prompt="abc", max_tokens=3))
        assert r.text == "t=0.0 ok"
        prompt = "one\ttwo\tthree\t"
        r = await client.top_logprobs(TopLogprobsRequest(prompt=prompt, positions=(4, 8, 14), top_k=3))
        assert [lp.top for lp in r.logprobs] == [{"a0": -1.0, "a1": -2.0, "a2": -3.0}] * 3
        sent = [b for b in srv.bodies if isinstance(b.get("prompt"), list)][-1]
        assert sent["prompt"] == ["one\t", "one\ttwo\t", "one\ttwo\tthree\t"] and sent["max_tokens"] == 1
        with pytest.raises(LLMError, match="outside the prompt"):
            await client.top_logprobs(TopLogprobsRequest(prompt=prompt, positions=(99,)))
        await client.aclose()


async def test_settings_are_per_request(tmp_path: Path) -> None:
    """Concurrent requests with different temperatures/max_tokens do not affect each other."""
    async with FakeOpenAIServer(latency_s=0.02) as srv:
        client = make_client(f"openai-compatible:{srv.url}/v1/fake", fast_config(tmp_path, cache=False))
        temps = [round(0.1 * i, 1) for i in range(20)]
        reqs = [chat(f"q{i}", temperature=t, max_tokens=10 + i) for i, t in enumerate(temps)]
        out = await asyncio.gather(*(client.chat(r) for r in reqs))
        assert [o.text for o in out] == [f"t={t} q{i}" for i, t in enumerate(temps)]
        by_q = {b["messages"][-1]["content"]: b for b in srv.bodies}
        assert all(
            by_q[f"q{i}"]["max_tokens"] == 10 + i and by_q[f"q{i}"]["temperature"] == t for i, t in enumerate(temps)
        )
        with pytest.raises(Exception, match=r"cannot assign|frozen"):
            reqs[0].temperature = 1.0  # type: ignore[misc]
        await client.aclose()


# -- cache ------------------------------------------------------------------------------------------


async def test_cache_rerun_sends_nothing_and_coalesces(tmp_path: Path) -> None:
    async with FakeOpenAIServer(latency_s=0.05) as srv:
        spec = f"openai-compatible:{srv.url}/v1/fake"
        client = make_client(spec, fast_config(tmp_path))
        reqs = [chat(f"q{i}") for i in range(10)]
        # 10 distinct requests, each asked 3 times at once: 10 sent, 20 coalesced
        first = await asyncio.gather(*(client.chat(r) for r in reqs for _ in range(3)))
        assert srv.requests == 10
        assert sum(r.cached for r in first) == 20
        assert client.cache_stats()["coalesced"] == 20
        assert client.counters() == {
            "attempts": 10,
            "retries": 0,
            "cache_hits": 0,
            "cache_misses": 10,
            "coalesced": 20,
            "failures": 0,
        }
        await client.aclose()

        client2 = make_client(spec, fast_config(tmp_path))  # a rerun: new client, same cache file
        again = await asyncio.gather(*(client2.chat(r) for r in reqs))
        assert srv.requests == 10
        assert all(r.cached for r in again)
        assert [r.text for r in again] == [r.text for r in first[::3]]
        assert client2.meter.total.requests == 0 and client2.meter.total.cache_hits == 10
        # another setting is another request
        await client2.chat(chat("q0", temperature=0.7))
        assert srv.requests == 11
        await client2.aclose()

        nocache = make_client(spec, fast_config(tmp_path, cache=False))
        await nocache.chat(reqs[0])
        assert srv.requests == 12 and nocache.cache_stats() == {"enabled": False, "attempts": 1, "retries": 0}
        await nocache.aclose()


async def test_failures_are_not_cached(tmp_path: Path) -> None:
    def schedule(attempt: int, body: dict[str, Any]) -> FaultKind | None:
        return "400" if body["messages"][-1]["content"] == "bad" and attempt == 1 else None

    async with FakeOpenAIServer() as srv, FaultProxy(srv.url, schedule) as proxy:
        client = make_client(f"openai-compatible:{proxy.url}/v1/fake", fast_config(tmp_path))
        with pytest.raises(LLMError) as ei:
            await client.chat(chat("bad"))
        assert ei.value.status == 400 and not ei.value.retryable and "after 1 attempt" in ei.value.reason
        assert client.cache_stats()["entries"] == 0
        r = await client.chat(chat("bad"))  # asked again: sent again (second attempt passes)
        assert r.text == "t=0.0 bad" and not r.cached
        assert client.meter.failures == {client.spec: 1}
        await client.aclose()


def test_request_key_covers_every_field() -> None:
    base = chat("x")
    variants = [
        chat("x", temperature=0.1),
        chat("x", max_tokens=3),
        chat("x", seed=1),
        chat("y"),
        chat("x", stop=("\n",)),
        chat("x", json_mode=True),
        chat("x", top_logprobs=5),
    ]
    keys = {request_key("s", v) for v in variants} | {request_key("s", base), request_key("t", base)}
    assert len(keys) == len(variants) + 2
    assert request_key("s", chat("x")) == request_key("s", base)


def test_request_key_is_the_canonical_json_of_asdict() -> None:
    """The fast canonical form gives the same key as the asdict formula, so existing caches stay valid; fields
    added later (ChatRequest.top_logprobs) are left out at their default, so the keys of answers cached before
    them are unchanged."""
    import dataclasses
    import hashlib

    def reference(spec: str, request: Any) -> str:
        fields = dataclasses.asdict(request)
        if isinstance(request, ChatRequest) and fields["top_logprobs"] == 0:
            del fields["top_logprobs"]  # the asdict of a ChatRequest before the field existed
        payload = {"spec": spec, "type": type(request).__name__, "request": fields}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    requests: list[Any] = [
        ChatRequest(
            messages=(ChatMessage("system", "be brief"), ChatMessage("user", "héllo\t<b>")),
            stop=("\n", "END"),
            seed=3,
            json_mode=True,
        ),
        ChatRequest(messages=(ChatMessage("user", "rate"),), top_logprobs=20),
        CompletionRequest(prompt="a\tb", max_tokens=1, temperature=0.5),
        TopLogprobsRequest(prompt="x\ty\tz", positions=(2, 4), top_k=5),
    ]
    for r in requests:
        assert request_key("openai:m", r) == reference("openai:m", r)


async def test_answers_arriving_together_share_one_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: answers that arrive in one turn of the loop are committed together, every answer is in
    the file before its caller sees it, and a failed write is logged while the answers are still returned."""
    commits: list[int] = []
    put_many = ResponseCache.put_many

    def counting(self: ResponseCache, entries: list[Any]) -> None:
        commits.append(len(entries))
        put_many(self, entries)

    monkeypatch.setattr(ResponseCache, "put_many", counting)
    async with FakeOpenAIServer(latency_s=0.05) as srv:
        db = tmp_path / "group.sqlite"
        client = make_client(f"openai-compatible:{srv.url}/v1/fake", fast_config(tmp_path, cache_path=db))
        assert client.cached is not None
        in_file: list[bool] = []

        async def ask(i: int) -> LLMResponse:
            r = await client.chat(chat(f"g{i}"))
            key = request_key(client.spec, chat(f"g{i}"))
            in_file.append(client.cached.cache.get(key) is not None)  # type: ignore[union-attr]
            return r

        out = await asyncio.gather(*(ask(i) for i in range(40)))
        assert [o.text for o in out] == [f"t=0.0 g{i}" for i in range(40)]
        assert all(in_file) and sum(commits) == 40 and len(commits) < 40
        assert client.cache_stats()["entries"] == 40

        def broken(self: ResponseCache, entries: list[Any]) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(ResponseCache, "put_many", broken)
        r = await client.chat(chat("unstored"))
        assert r.text == "t=0.0 unstored" and client.cache_stats()["entries"] == 40
        await client.aclose()


KILL_SCRIPT = """
import asyncio, sys
from pathlib import Path
from autointerp.llm import ChatMessage, ChatRequest, ClientConfig, make_client

async def main():
    client = make_client(sys.argv[1], ClientConfig(cache_path=Path(sys.argv[2]), timeout_s=600, max_concurrency=1))
    for i in range(10):
        await client.chat(ChatRequest(messages=(ChatMessage("user", f"q{i}"),)))
        print("answered", i, flush=True)

asyncio.run(main())
"""


async def test_cache_survives_kill(tmp_path: Path) -> None:
    """Answers are committed as they arrive: SIGKILL mid-run loses none of them."""

    def schedule(attempt: int, body: dict[str, Any]) -> FaultKind | None:
        return "stall" if body["messages"][-1]["content"] == "q3" else None

    db = tmp_path / "kill.sqlite"
    async with FakeOpenAIServer() as srv, FaultProxy(srv.url, schedule) as proxy:
        spec = f"openai-compatible:{proxy.url}/v1/fake"
        env = {**os.environ, "AUTOINTERP_CACHE": str(tmp_path / "cache")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILL_SCRIPT, spec, str(db), stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        lines = [await asyncio.wait_for(proc.stdout.readline(), 60) for _ in range(3)]
        assert lines[-1].strip() == b"answered 2"
        for _ in range(600):  # wait until the stalled q3 has reached the proxy
            if len(proxy.log) >= 4:
                break
            await asyncio.sleep(0.05)
        proc.kill()
        await proc.wait()
        cache = ResponseCache(db)
        assert cache.stats().entries == 3
        cache.close()
        client = make_client(f"openai-compatible:{proxy.url}/v1/fake", fast_config(tmp_path, cache_path=db))
        before = srv.requests
        out = await asyncio.gather(*(client.chat(chat(f"q{i}")) for i in range(3)))
        assert srv.requests == before and all(o.cached for o in out)
        await client.aclose()


CONCURRENT_KILL_SCRIPT = """
import asyncio, sys
from pathlib import Path
from autointerp.llm import ChatMessage, ChatRequest, ClientConfig, make_client

async def main():
    client = make_client(sys.argv[1], ClientConfig(cache_path=Path(sys.argv[2]), timeout_s=600, max_concurrency=8))

    async def one(i):
        await client.chat(ChatRequest(messages=(ChatMessage("user", f"c{i}"),)))
        print("answered", i, flush=True)

    await asyncio.gather(*(one(i) for i in range(1000)))

asyncio.run(main())
"""


async def test_cache_survives_kill_at_concurrency(tmp_path: Path) -> None:
    """With 8 requests in flight and answers committed in groups, SIGKILL loses no answer a caller saw."""
    db = tmp_path / "kill8.sqlite"
    async with FakeOpenAIServer(latency_s=0.02) as srv:
        spec = f"openai-compatible:{srv.url}/v1/fake"
        env = {**os.environ, "AUTOINTERP_CACHE": str(tmp_path / "cache")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CONCURRENT_KILL_SCRIPT, spec, str(db), stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        seen = [int((await asyncio.wait_for(proc.stdout.readline(), 60)).split()[1]) for _ in range(40)]
        proc.kill()
        await proc.wait()
        assert srv.requests < 1000  # killed mid-run
        cache = ResponseCache(db)
        for i in seen:
            assert cache.get(request_key(spec, chat(f"c{i}"))) is not None, i
        assert cache.stats().entries >= len(seen)
        cache.close()


# -- retries and faults -------------------------------------------------------------------------------


async def test_fault_injection_every_request_accounted_for(tmp_path: Path) -> None:
    """429 + Retry-After, 500, stalls, truncated bodies, garbage JSON, 400 and a persistent 500: every
    request ends answered or failed with its reason, none lost, none duplicated."""
    kinds: list[FaultKind | None] = ["429", "500", "stall", "truncate", "garbage", None]

    def schedule(attempt: int, body: dict[str, Any]) -> FaultKind | None:
        q = body["messages"][-1]["content"]
        i = int(q[1:])
        if q == "q7":
            return "400"
        if q == "q11":
            return "500"  # always: fails after max_attempts
        return kinds[i % len(kinds)] if attempt == 1 else None

    async with FakeOpenAIServer() as srv, FaultProxy(srv.url, schedule, retry_after_s=0.05) as proxy:
        cfg = fast_config(tmp_path, timeout_s=1.0, max_attempts=3, cache=False)
        client = make_client(f"openai-compatible:{proxy.url}/v1/fake", cfg)
        n = 36
        results = await asyncio.gather(*(client.chat(chat(f"q{i}")) for i in range(n)), return_exceptions=True)
        assert len(results) == n
        for i, r in enumerate(results):
            if i == 7:
                assert isinstance(r, LLMError) and r.status == 400 and "after 1 attempt" in r.reason
            elif i == 11:
                assert isinstance(r, LLMError) and r.status == 500 and r.retryable and "after 3 attempts" in r.reason
            else:
                assert isinstance(r, LLMResponse), (i, r)
                assert r.text == f"t=0.0 q{i}"
        attempts = Counter(q for q, _, _ in proxy.log)
        assert attempts[next(b for b in attempts if '"q7"' in b)] == 1  # 400: never retried
        assert attempts[next(b for b in attempts if '"q11"' in b)] == 3
        answered = Counter(b["messages"][-1]["content"] for b in srv.bodies)
        assert set(answered) == {f"q{i}" for i in range(n)} - {"q7", "q11"}
        stats = client.cache_stats()
        # one retry per scheduled fault, two for q11; more only if the busy machine outlasted a timeout
        assert stats["retries"] >= sum(1 for i in range(n) if kinds[i % len(kinds)] and i not in (7, 11)) + 2
        assert client.meter.total.requests == n - 2 and sum(client.meter.failures.values()) == 2
        await client.aclose()


def test_retry_after_parsing_and_error_mapping() -> None:
    import httpx
    import openai

    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({}) is None
    assert 0 <= (parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) or 0) < 1
    req = httpx.Request("POST", "http://x/v1/chat/completions")
    for status, retryable in [
        (429, True),
        (500, True),
        (503, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
    ]:
        resp = httpx.Response(status, request=req, headers={"retry-after": "3"})
        e = openai.APIStatusError("boom", response=resp, body=None)  # type: ignore[arg-type]
        m = map_exception(e, "spec")
        assert (m.status, m.retryable, m.retry_after) == (status, retryable, 3.0)
    assert map_exception(TimeoutError(), "s").retryable
    assert map_exception(ValueError("x"), "s").retryable is False


def test_sdk_exception_classes_map() -> None:
    import anthropic
    import httpx2
    import openai

    req = httpx2.Request("POST", "http://x/v1/messages")
    e: Exception
    for e in (openai.APITimeoutError(req), anthropic.APITimeoutError(req)):
        m = map_exception(e, "s")
        assert m.retryable and m.status is None and "timed out" in m.reason
    for e in (openai.APIConnectionError(request=req), anthropic.APIConnectionError(request=req)):
        m = map_exception(e, "s")
        assert m.retryable and "connection" in m.reason
    resp = httpx2.Response(429, request=req, headers={"retry-after": "7"})
    cls: Any
    for cls in (openai.RateLimitError, anthropic.RateLimitError):
        m = map_exception(cls("slow down", response=resp, body=None), "s")
        assert (m.status, m.retryable, m.retry_after) == (429, True, 7.0)
    status: int
    for status, cls in ((401, anthropic.AuthenticationError), (404, anthropic.NotFoundError)):
        r = httpx2.Response(status, request=req)
        assert map_exception(cls("no", response=r, body=None), "s").retryable is False
    overloaded = httpx2.Response(529, request=req)
    assert map_exception(anthropic.APIStatusError("overloaded", response=overloaded, body=None), "s").retryable


async def test_retry_waits_honour_retry_after(tmp_path: Path) -> None:
    from autointerp.llm.reliable import ReliableClient

    async with FakeOpenAIServer() as srv:
        cfg = fast_config(tmp_path, max_backoff_s=10, backoff_s=0.5)
        client = make_client(f"openai-compatible:{srv.url}/v1/fake", cfg)
        rel: ReliableClient = client.reliable
        assert all(
            4.0 <= rel._backoff(LLMError("429", status=429, retryable=True, retry_after=4.0), 1) <= 10.0
            for _ in range(50)
        )
        assert rel._backoff(LLMError("429", retryable=True, retry_after=60.0), 1) == 10.0  # capped
        err = LLMError("500", status=500, retryable=True)
        assert all(0.0 <= rel._backoff(err, 1) <= 0.5 for _ in range(50))  # full jitter under 0.5 * 2**0
        assert max(rel._backoff(err, 3) for _ in range(200)) > 0.5  # grows: up to 0.5 * 2**2
        assert all(0.0 <= rel._backoff(err, 30) <= 10.0 for _ in range(50))
        await client.aclose()


async def test_rate_limits_and_concurrency_bound(tmp_path: Path) -> None:
    """All requests complete under request and token limits; the concurrency bound holds at the server."""
    in_flight = 0
    peak = 0

    class Counting(FakeOpenAIServer):
        async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await super().handle(method, path, headers, body)
            finally:
                in_flight -= 1

    async with Counting(latency_s=0.02) as srv:
        cfg = fast_config(
            tmp_path, cache=False, max_concurrency=3, requests_per_minute=60_000, tokens_per_minute=1_000_000
        )
        client = make_client(f"openai-compatible:{srv.url}/v1/fake", cfg)
        out = await asyncio.gather(*(client.chat(chat(f"q{i}")) for i in range(30)))
        assert len(out) == 30 and srv.requests == 30 and 1 <= peak <= 3
        await client.aclose()


async def test_keys_never_in_cache_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)

    def schedule(attempt: int, body: dict[str, Any]) -> FaultKind | None:
        return "500" if attempt == 1 else None

    async with FakeOpenAIServer() as srv, FaultProxy(srv.url, schedule) as proxy:
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{proxy.url}/v1")
        client = make_client("openai:gpt-fake", fast_config(tmp_path))
        r = await client.chat(chat("secret test"))
        assert r.text == "t=0.0 secret test"
        assert srv.auth_headers[-1] == f"Bearer {FAKE_KEY}"  # the key did reach the server
        # openai-compatible never forwards $OPENAI_API_KEY to another server
        other = make_client(f"openai-compatible:{srv.url}/v1/fake", fast_config(tmp_path))
        await other.chat(chat("other"))
        assert FAKE_KEY not in srv.auth_headers[-1]
        await client.aclose()
        await other.aclose()
    db = tmp_path / "llm-cache.sqlite"
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("llm-cache.sqlite*"))
    assert db.exists() and FAKE_KEY.encode() not in blob
    assert FAKE_KEY not in caplog.text
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 2


# -- usage and prices ---------------------------------------------------------------------------------


def test_usage_log_sums_sessions_per_role_and_keeps_undefined_costs(tmp_path: Path) -> None:
    from autointerp.llm.usage import Price, UsageLog, usage_from_log
    from autointerp.rundir import read_jsonl

    prices = PriceTable({"openai:gpt-4o-mini": Price(0.15, 0.6)}, "my-prices.json")
    path = tmp_path / "usage.jsonl"
    for session in range(2):
        log = UsageLog(path)
        log.start_session(prices)
        meters = {r: UsageMeter(prices=prices, role=r, log=log) for r in ("explainer", "simulator", "judge")}
        meters["explainer"].add("openai:gpt-4o-mini", Usage(prompt_tokens=1_000_000, requests=1, cost_usd=0.15))
        if session == 0:
            meters["simulator"].unpriced.add("openai-compatible:https://x.org/v1/m")
            meters["simulator"].add("openai-compatible:https://x.org/v1/m", Usage(prompt_tokens=10, requests=3))
        meters["judge"].unpriced.add("b:x")  # unpriced, but sent nothing: its cost is a true 0
        meters["judge"].add("b:x", Usage(cache_hits=5))
        meters["judge"].add_failure("b:x")
        log.append({"clients": {"openai:gpt-4o-mini": {"attempts": 1, "retries": session}}})
        log.close()
    out = usage_from_log(read_jsonl(path))
    assert out["explainer"]["requests"] == 2 and abs(out["explainer"]["cost_usd"] - 0.3) < 1e-12
    assert out["judge"]["cost_usd"] == 0.0 and out["judge"]["cache_hits"] == 10 and out["judge"]["failures"] == 2
    assert out["simulator"]["cost_usd"] is None and out["total"]["cost_usd"] is None
    assert out["total"]["requests"] == 5 and out["unpriced"] == {"simulator": ["openai-compatible:https://x.org/v1/m"]}
    assert out["cost_reason"] == (
        "no price for openai-compatible:https://x.org/v1/m in my-prices.json; pass a price table with --prices FILE"
    )
    assert out["clients"] == {"openai:gpt-4o-mini": {"attempts": 2, "retries": 1}}


async def test_usage_log_splits_each_roles_tokens_by_request_kind(tmp_path: Path) -> None:
    from autointerp.llm.base import ChatMessage, ChatRequest, TopLogprobsRequest
    from autointerp.llm.usage import MeteredClient, UsageLog, usage_from_log
    from autointerp.rundir import read_jsonl
    from tests.fake_llm import FakeLLM

    path = tmp_path / "usage.jsonl"
    log = UsageLog(path)
    log.append({"role": "judge", "spec": "fake:old", "usage": {"prompt_tokens": 7, "requests": 1}})  # no kind
    judge = MeteredClient(FakeLLM(), UsageMeter(prices=PriceTable({}, "none"), role="judge", log=log))
    chat = await judge.chat(ChatRequest(messages=(ChatMessage("user", "x" * 400),)))
    probs = await judge.top_logprobs(TopLogprobsRequest(prompt="y" * 800, positions=(10, 20)))
    await judge.chat(ChatRequest(messages=(ChatMessage("user", "z" * 40),)))
    log.close()
    out = usage_from_log(read_jsonl(path))["judge"]
    kinds = out["by_kind"]
    assert set(kinds) == {"chat", "top_logprobs", "unknown"}
    assert kinds["chat"]["requests"] == 2 and kinds["chat"]["prompt_tokens"] == chat.usage.prompt_tokens + 10
    assert kinds["top_logprobs"]["prompt_tokens"] == probs.usage.prompt_tokens == 200
    assert kinds["unknown"]["prompt_tokens"] == 7
    assert sum(k["prompt_tokens"] for k in kinds.values()) == out["prompt_tokens"]


async def test_usage_meter_and_prices(tmp_path: Path) -> None:
    table = PriceTable.load()
    assert table.price("local:qwen2.5-coder-1.5b") is not None
    assert table.price("openai:gpt-4o-mini") is not None
    prices = tmp_path / "prices.json"
    prices.write_text('{"models": {"openai-compatible:*": {"input_per_mtok": 1e6, "output_per_mtok": 2e6}}}')
    async with FakeOpenAIServer() as srv:
        spec = f"openai-compatible:{srv.url}/v1/fake"
        meter = UsageMeter(prices=PriceTable.load(prices))
        client = make_client(spec, fast_config(tmp_path), meter=meter)
        r = await client.chat(chat("a b c"))  # fake usage: prompt 3+5 tokens, completion 3
        assert r.usage.cost_usd == pytest.approx(8 * 1.0 + 3 * 2.0)
        await client.chat(chat("a b c"))
        assert meter.total.requests == 1 and meter.total.cache_hits == 1
        assert meter.cost_usd() == (pytest.approx(14.0), "")
        await client.aclose()

        unpriced = UsageMeter(prices=PriceTable.load())
        c2 = make_client(spec.replace("127.0.0.1", "localhost"), fast_config(tmp_path, cache=False), meter=unpriced)
        await c2.chat(chat("x"))
        await c2.aclose()
    cost, reason = unpriced.cost_usd()
    # localhost servers are priced at 0 in the packaged table
    assert cost == 0.0 and reason == ""
    bad = UsageMeter(prices=PriceTable({}, "empty"))
    bad.add("openai:unknown", Usage(prompt_tokens=10, requests=1))
    bad.unpriced.add("openai:unknown")
    cost, reason = bad.cost_usd()
    assert cost is None and "openai:unknown" in reason
    bad_file = tmp_path / "bad.json"
    bad_file.write_text("{not json")
    with pytest.raises(UserError, match="cannot read prices"):
        PriceTable.load(bad_file)


# -- parsers ---------------------------------------------------------------------------------------


def test_parse_top_logprobs_formats() -> None:
    assert parse_top_logprobs({"top_logprobs": [{" a": -0.1, " b": -2.0}]}) == {" a": -0.1, " b": -2.0}
    content = {
        "content": [
            {
                "token": "x",
                "logprob": -0.5,
                "top_logprobs": [{"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.5}],
            }
        ]
    }
    assert parse_top_logprobs(content) == {"x": -0.5, "y": -1.5}
    probs = parse_top_logprobs({"probs": [{"tok_str": "z", "prob": 1.0}]})
    assert probs == {"z": 0.0}
    assert parse_top_logprobs(None) is None and parse_top_logprobs({"content": []}) is None


def test_align_vllm_prompt_logprobs() -> None:
    prompt = "ab\tcd\t"
    # tokens: BOS, "ab", "\t", "cd", "\t"; ids 1, 10, 11, 12, 11
    ids = [1, 10, 11, 12, 11]
    plp = [
        None,
        {"10": {"logprob": -3.0, "decoded_token": "ab"}, "99": {"logprob": -1.0, "decoded_token": "zz"}},
        {"11": {"logprob": -0.1, "decoded_token": "\t"}},
        {"12": {"logprob": -2.0, "decoded_token": "cd"}, "13": {"logprob": -0.5, "decoded_token": "ef"}},
        {"11": {"logprob": -0.2, "decoded_token": "\t"}},
    ]
    got = align_prompt_logprobs(TopLogprobsRequest(prompt=prompt, positions=(3,), top_k=2), plp, ids)
    assert got is not None and got[0].top == {"ef": -0.5, "cd": -2.0}
    assert align_prompt_logprobs(TopLogprobsRequest(prompt=prompt, positions=(4,)), plp, ids) is None
    assert align_prompt_logprobs(TopLogprobsRequest(prompt="xx" + prompt, positions=(3,)), plp[:2], ids) is None


async def test_vllm_server_prompt_logprobs_fallback(tmp_path: Path) -> None:
    """A server that ignores prompt_logprobs: the client falls back to per-position completions."""
    async with FakeOpenAIServer() as srv:
        client = make_client(f"vllm-server:{srv.url}/v1/fake", fast_config(tmp_path, cache=False))
        r = await client.top_logprobs(TopLogprobsRequest(prompt="a\tb\t", positions=(2, 4), top_k=2))

        def completions() -> int:
            return sum("prompt" in b for b in srv.bodies)

        assert len(r.logprobs) == 2 and completions() == 2
        assert client.logprob_strategy() == "prefix-list"
        await client.top_logprobs(TopLogprobsRequest(prompt="a\tb\tc\t", positions=(2,), top_k=2))
        assert completions() == 3  # no second probe
        await client.aclose()


async def test_token_bucket_paces_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """120 requests/min, burst 2: 6 acquisitions need 4 refills of 0.5 s each (no real waiting)."""
    from autointerp.llm import reliable

    now = [100.0]
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    monkeypatch.setattr(reliable.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(reliable.asyncio, "sleep", fake_sleep)
    bucket = reliable.TokenBucket(120, capacity=2)
    for _ in range(6):
        await bucket.acquire(1)
    assert sum(slept) == pytest.approx(2.0)
    tokens = reliable.TokenBucket(600, capacity=100)  # tokens/min: a 250-token request waits for a full bucket
    await tokens.acquire(250)
    assert tokens.level == pytest.approx(0.0)
