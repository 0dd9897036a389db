"""The real openai and anthropic SDKs against a real llama.cpp server (xllamacpp, SmolLM2, 2 threads) on
loopback: chat, completions, top_logprobs through ``openai-compatible:`` and ``local:``, the Anthropic
Messages API, and faults injected in front of the real server."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from llm_fixtures import local_config, shared_llama_server

from autointerp.llm import ChatMessage, ChatRequest, CompletionRequest, LLMError, LLMResponse, TopLogprobsRequest
from autointerp.llm.factory import make_client
from autointerp.llm.local import LocalServer
from autointerp.llm.testing import FaultKind, FaultProxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def llama() -> LocalServer:
    return shared_llama_server()


def user(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("system", "You are terse."), ChatMessage("user", text)), **kw)


async def test_openai_compatible_chat_complete_logprobs(llama: LocalServer, tmp_path: Path) -> None:
    client = make_client(f"openai-compatible:{llama.base_url}/smollm2", local_config(tmp_path))
    r = await client.chat(user("What is the capital of France?", max_tokens=8))
    assert r.text.strip() and r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    r = await client.complete(CompletionRequest(prompt="The capital of France is", max_tokens=2))
    assert "Paris" in r.text
    prompt = "The capital of France is Paris.\nThe capital of Italy is"
    pos = (len("The capital of France is"), len(prompt))
    r = await client.top_logprobs(TopLogprobsRequest(prompt=prompt, positions=pos, top_k=5))
    assert len(r.logprobs) == 2
    for lp in r.logprobs:
        assert 1 <= len(lp.top) <= 5 and all(v <= 0.0 for v in lp.top.values())
        assert sum(math.exp(v) for v in lp.top.values()) <= 1.0 + 1e-4
    assert max(r.logprobs[0].top, key=r.logprobs[0].top.__getitem__) == " Paris"
    assert max(r.logprobs[1].top, key=r.logprobs[1].top.__getitem__) == " Rome"
    # the same answer as one plain 1-token completion of the prefix
    single = await client.top_logprobs(TopLogprobsRequest(prompt=prompt, positions=pos[:1], top_k=5))
    assert single.logprobs[0].top == pytest.approx(r.logprobs[0].top, abs=1e-3)
    await client.aclose()


async def test_chat_answer_logprobs_are_those_of_the_answers_own_tokens(llama: LocalServer, tmp_path: Path) -> None:
    """What the judge reads P(yes) from: at temperature 0, every answer token comes with its alternatives, is the
    most likely of them, and the tokens spell the answer."""
    client = make_client("local:smollm2-135m", local_config(tmp_path))
    r = await client.chat(user("Count from 1 to 5 as a JSON list.", max_tokens=20, top_logprobs=5))
    assert r.text and "".join(t.token for t in r.logprobs) == r.text
    for t in r.logprobs:
        if t.token:  # the end-of-text token has no text
            assert max(t.top, key=t.top.__getitem__) == t.token and len(t.top) <= 5
    plain = await client.chat(user("Count from 1 to 5 as a JSON list.", max_tokens=20))
    assert plain.text == r.text and plain.logprobs == []
    await client.aclose()


async def test_local_spec_shares_the_server_and_caches(llama: LocalServer, tmp_path: Path) -> None:
    client = make_client("local:smollm2-135m", local_config(tmp_path))
    assert client.backend.server is llama  # type: ignore[attr-defined]
    req = TopLogprobsRequest(prompt="1, 2, 3, 4,", positions=(len("1, 2, 3,"), len("1, 2, 3, 4,")), top_k=3)
    a = await client.top_logprobs(req)
    b = await client.top_logprobs(req)
    assert not a.cached and b.cached and [x.top for x in a.logprobs] == [x.top for x in b.logprobs]
    assert client.meter.total.requests == 1 and client.meter.total.cache_hits == 1
    assert client.meter.cost_usd() == (0.0, "")
    await client.aclose()
    assert llama.refs >= 1  # the fixture's reference keeps it serving


async def test_anthropic_sdk_against_llama_server(
    llama: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", llama.base_url.removesuffix("/v1"))
    client = make_client("anthropic:smollm2", local_config(tmp_path))
    r = await client.chat(user("Say hello.", max_tokens=8))
    assert r.text.strip() and r.usage.completion_tokens > 0 and r.usage.requests == 1
    with pytest.raises(LLMError, match="no logprobs"):
        await client.top_logprobs(TopLogprobsRequest(prompt="x y", positions=(1,)))
    # an Anthropic endpoint without logprobs (and here without prompt caching): a judge's P(yes) is undefined
    assert not client.supports_logprobs and {"completions", "chat_logprobs"} <= set(client.capabilities.missing)
    await client.aclose()


async def test_faults_in_front_of_the_real_server(llama: LocalServer, tmp_path: Path) -> None:
    # (stalls and timeouts are tested against the fast fake server: on a busy 2-core machine a real timeout
    # here would only measure the machine's load)
    kinds: list[FaultKind | None] = ["429", "500", "truncate", "garbage", None]

    def schedule(attempt: int, body: dict[str, Any]) -> FaultKind | None:
        i = int(body["prompt"].split()[-1])
        return kinds[i % len(kinds)] if attempt == 1 else None

    async with FaultProxy(llama.base_url.removesuffix("/v1"), schedule, retry_after_s=0.05) as proxy:
        cfg = local_config(tmp_path, timeout_s=120.0, backoff_s=0.01, max_backoff_s=0.2, max_attempts=3, cache=False)
        client = make_client(f"openai-compatible:{proxy.url}/v1/smollm2", cfg)
        reqs = [CompletionRequest(prompt=f"Count: {i}", max_tokens=2) for i in range(5)]
        out = await asyncio.gather(*(client.complete(r) for r in reqs), return_exceptions=True)
        assert all(isinstance(o, LLMResponse) for o in out), out
        assert client.cache_stats()["retries"] == 4, proxy.log
        await client.aclose()


async def test_llama_cpp_and_transformers_logprobs_agree(llama: LocalServer, tmp_path: Path) -> None:
    """The same GGUF served by llama.cpp and de-quantized into transformers gives the same next-token
    distributions at the same character positions (a cross-check of both position mappings)."""
    from autointerp.llm import ClientConfig

    a = make_client("local:smollm2-135m", local_config(tmp_path, cache=False))
    b = make_client("transformers:smollm2-135m", ClientConfig(threads=2, cache=False, timeout_s=600))
    prompt = "The capital of France is Paris.\nThe capital of Italy is"
    req = TopLogprobsRequest(prompt=prompt, positions=(len("The capital of France is"), len(prompt)), top_k=5)
    ra, rb = await a.top_logprobs(req), await b.top_logprobs(req)
    for x, y in zip(ra.logprobs, rb.logprobs, strict=True):
        top3 = sorted(x.top, key=x.top.__getitem__, reverse=True)[:3]
        assert top3 == sorted(y.top, key=y.top.__getitem__, reverse=True)[:3]
        assert all(abs(x.top[t] - y.top[t]) < 0.5 for t in top3)
    await a.aclose()
    await b.aclose()
