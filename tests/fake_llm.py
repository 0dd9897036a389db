"""A deterministic fake LLMClient for unit tests of explainers, simulators, scorers and the pipeline.

* ``chat``: answered by ``chat_fn(request) -> str`` (default: a fixed explanation).
* ``top_logprobs``: a keyword oracle: at each slot, if the token on the slot's line contains a word of the
  last ``Feature explanation:`` line of the prompt (case-insensitive, words of 3+ letters), "9" is
  likely, else "0" is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from autointerp.llm.base import (
    ChatRequest,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
)
from autointerp.records import Usage


def keyword_oracle(prompt: str, pos: int) -> dict[str, float]:
    expl = re.findall(r"Feature explanation: (.*)", prompt[:pos])
    words = {w.lower() for w in re.findall(r"[A-Za-z]{3,}", expl[-1] if expl else "")}
    line = prompt[:pos].rsplit("\n", 1)[-1].strip().lower()
    hit = any(w in line for w in words)
    if hit:
        return {"9": math.log(0.8), "8": math.log(0.1), "0": math.log(0.05), "unknown": math.log(0.05)}
    return {"0": math.log(0.9), "1": math.log(0.05), "unknown": math.log(0.05)}


class FakeLLM:
    supports_completion = True
    supports_logprobs = True

    def __init__(
        self,
        spec: str = "fake:oracle",
        chat_fn: Callable[[ChatRequest], str] | None = None,
        logprob_fn: Callable[[str, int], dict[str, float]] = keyword_oracle,
        fail_chat: bool = False,
        answer_logprob_fn: Callable[[ChatRequest, str, int], dict[str, float]] | None = None,
    ) -> None:
        self.spec = spec
        self.chat_fn = chat_fn or (lambda req: "Explanation: the word cat")
        self.logprob_fn = logprob_fn
        self.fail_chat = fail_chat
        self.answer_logprob_fn = answer_logprob_fn
        """When set, a chat request with ``top_logprobs`` gets the answer's tokens (runs of digits, of letters,
        single other characters) with ``answer_logprob_fn(request, answer, token_start)`` as alternatives."""
        self.chat_requests: list[ChatRequest] = []
        self.logprob_requests: list[TopLogprobsRequest] = []

    async def chat(self, request: ChatRequest) -> LLMResponse:
        self.chat_requests.append(request)
        if self.fail_chat:
            raise LLMError("fake failure")
        n = sum(len(m.content) for m in request.messages) // 4
        text = self.chat_fn(request)
        lps = []
        if request.top_logprobs and self.answer_logprob_fn is not None:
            lps = [
                TokenLogprobs(top=self.answer_logprob_fn(request, text, m.start()), token=m.group())
                for m in re.finditer(r"\d+|[A-Za-z]+|.", text, re.S)
            ]
        return LLMResponse(text=text, logprobs=lps, usage=Usage(prompt_tokens=n, completion_tokens=5, requests=1))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return LLMResponse(text="0", usage=Usage(prompt_tokens=len(request.prompt) // 4, requests=1))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        self.logprob_requests.append(request)
        out = [TokenLogprobs(top=self.logprob_fn(request.prompt, p)) for p in request.positions]
        return LLMResponse(logprobs=out, usage=Usage(prompt_tokens=len(request.prompt) // 4, requests=1))

    async def aclose(self) -> None:
        return None


# -- synthetic feature records ------------------------------------------------------------------------

_WORDS = ["the", " cat", " sat", " on", " a", " mat", " and", " dog", " ran", " far", ".", " bird", " flew", " home"]


def synthetic_record(index: int, keyword: str = " cat", source: str = "toy/L0/mlp_neurons", seed: int = 0):  # type: ignore[no-untyped-def]
    """A FeatureRecord whose feature fires (value 5) exactly on ``keyword`` tokens."""
    import numpy as np

    from autointerp.records import ActivationRecord, FeatureId, FeatureRecord, FeatureStats

    rng = np.random.default_rng([seed, index])
    vocab = [w for w in _WORDS if w != keyword]

    def rec(window: int, with_kw: bool) -> ActivationRecord:
        toks = [str(x) for x in rng.choice(vocab, size=12)]
        if with_kw:
            for i in rng.choice(12, size=2, replace=False):
                toks[int(i)] = keyword
        acts = np.array([5.0 if t == keyword else 0.0 for t in toks], dtype=np.float32)
        return ActivationRecord(tokens=toks, token_ids=list(range(12)), activations=acts, window=window)

    w = iter(range(10_000))
    return FeatureRecord(
        id=FeatureId(source, index),
        stats=FeatureStats(n_tokens=1000, frequency=0.05, max=5.0, mean=0.25, mean_active=5.0),
        train=[rec(next(w), True) for _ in range(6)],
        test_top=[rec(next(w), True) for _ in range(4)],
        test_quantiles=[rec(next(w), True) for _ in range(2)],
        test_random=[rec(next(w), False) for _ in range(4)],
        valid=[rec(next(w), True) for _ in range(2)] + [rec(next(w), False)],
    )
