"""The vLLM offline backend around its engine call: vllm needs CUDA and is not installed here, so a fake
engine with vllm's ``LLM.generate`` / ``LLM.chat`` interface stands in. Concurrent requests reach it in one
batched call, each with its own sampling parameters, and every caller gets its own answer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from autointerp.llm import ChatMessage, ChatRequest, ClientConfig, CompletionRequest, LLMError, TopLogprobsRequest
from autointerp.llm.testing import fake_tokens
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
        self.calls.append(("generate", len(prompts)))
        return [self._out(p, sp) for p, sp in zip(prompts, params, strict=True)]

    def chat(self, messages: list[list[dict[str, str]]], params: list[Params], use_tqdm: bool = False) -> list[Output]:
        self.calls.append(("chat", len(messages)))
        return [self._out(m[-1]["content"], sp) for m, sp in zip(messages, params, strict=True)]


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
