"""Bounded waits: the default timeout fits the request, a queue behind a busy server is not a stall, a server
that accepts connections but never answers is reported (with its spec) after two timeouts, not 5 x 600 s, and
an invalid URL is not retried as if it were transient."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from llm_fixtures import fast_config

import autointerp.llm.reliable as reliable
from autointerp.llm.base import ChatMessage, ChatRequest, ClientConfig, LLMError, TopLogprobsRequest
from autointerp.llm.errors import map_exception
from autointerp.llm.factory import make_client
from autointerp.llm.testing import FakeOpenAIServer, HTTPReply
from autointerp.pipeline import ExplainConfig


def _chat(text: str, max_tokens: int = 16) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage("user", text),), max_tokens=max_tokens)


def test_the_default_timeout_fits_the_request() -> None:
    assert ClientConfig().timeout_s is None and ExplainConfig().client_config().timeout_s is None
    small = reliable.fitted_timeout(_chat("hi", max_tokens=10))
    big_prompt = reliable.fitted_timeout(_chat("x" * 40_000, max_tokens=10))
    long_answer = reliable.fitted_timeout(_chat("hi", max_tokens=512))
    assert small < 60 < big_prompt and small < long_answer
    assert reliable.fitted_timeout(_chat("x" * 10_000_000)) == reliable.FIT_MAX_S
    logprobs = reliable.fitted_timeout(TopLogprobsRequest(prompt="x" * 4000, positions=tuple(range(64))))
    assert small < logprobs < reliable.FIT_MAX_S
    assert ExplainConfig(timeout_s=42).client_config().timeout_s == 42


class _Silent:
    """A TCP server that accepts connections and reads requests but never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("fitted", [False, True])
async def test_a_server_that_never_answers_is_reported_as_stalled_after_two_timeouts(
    fitted: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fitted:  # fitted timeouts, scaled down so the test takes a second
        monkeypatch.setattr(reliable, "FIT_BASE_S", 0.3)
        monkeypatch.setattr(reliable, "FIT_READ_TPS", 1e9)
        monkeypatch.setattr(reliable, "FIT_WRITE_TPS", 1e9)
    async with _Silent() as url:
        spec = f"openai-compatible:{url}/silent-model"
        cfg = fast_config(tmp_path, timeout_s=None if fitted else 0.3, max_attempts=5, cache=False)
        client = make_client(spec, cfg)
        with pytest.raises(LLMError) as e:
            await client.chat(_chat("hello"))
        await client.aclose()
    assert "stalled" in e.value.reason and spec in e.value.reason
    assert client.reliable.attempts == 2, "a stalled endpoint is not tried max_attempts times"


class _OneSlot(FakeOpenAIServer):
    """Answers one request at a time (like a llama.cpp server with one slot): the others queue."""

    def __init__(self, latency_s: float) -> None:
        super().__init__()
        self.slot = asyncio.Lock()
        self.service_s = latency_s

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        async with self.slot:
            await asyncio.sleep(self.service_s)
            return await super().handle(method, path, headers, body)


async def test_a_queue_behind_a_busy_server_is_not_a_stall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # each request is given ~1 s; 8 queued requests take 8 x 0.2 s, longer than that, and all are answered
    monkeypatch.setattr(reliable, "FIT_BASE_S", 1.0)
    monkeypatch.setattr(reliable, "FIT_READ_TPS", 1e9)
    monkeypatch.setattr(reliable, "FIT_WRITE_TPS", 1e9)
    async with _OneSlot(latency_s=0.2) as srv:
        cfg = fast_config(tmp_path, timeout_s=None, max_attempts=1, cache=False, max_concurrency=8)
        client = make_client(f"openai-compatible:{srv.url}/v1/fake", cfg)
        results: list[Any] = await asyncio.gather(*(client.chat(_chat(f"q{i}")) for i in range(8)))
        await client.aclose()
    assert [r.text for r in results] == [f"t=0.0 q{i}" for i in range(8)]
    assert client.reliable.retries == 0


def test_invalid_urls_are_not_retried() -> None:
    import aiohttp
    import httpx

    for exc in (aiohttp.InvalidURL("http:/x"), httpx.UnsupportedProtocol("no scheme"), httpx.InvalidURL("bad")):
        err = map_exception(exc, "openai-compatible:http:/x")
        assert not err.retryable and "invalid URL" in err.reason
