"""``vllm:<model>``: vLLM's offline engine in this process (CUDA; ``pip install autointerp[vllm]``).

vllm is imported lazily, when the client is built, with prefix caching on. Concurrent requests reach the
engine together: a :class:`~autointerp.llm.batching.MicroBatcher` collects them for ``BATCH_WAIT_S`` (up to
``MAX_BATCH``) into one ``LLM.generate`` call (completions and ``top_logprobs``, each prompt with its own
``SamplingParams``) or one ``LLM.chat`` call (conversations), run in a worker thread; vLLM's continuous
batching and prefix cache then serve the batch. ``top_logprobs`` asks for ``prompt_logprobs`` of the full
prompt and maps them to character positions (see :func:`autointerp.llm.openai_backend.align_prompt_logprobs`);
usage records the prompt tokens vLLM read from its prefix cache (``num_cached_tokens``) where it reports them.

vLLM needs CUDA and is not installed on the project's CPU machines: the tests drive this class with a fake
engine of the same interface (``engine=``, ``sampling_params=``); the real engine is exercised where vllm is.
"""

from __future__ import annotations

from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
)
from autointerp.llm.batching import MicroBatcher
from autointerp.llm.openai_backend import align_prompt_logprobs, check_positions
from autointerp.records import Usage

MAX_BATCH = 256
"""Requests per engine call."""
BATCH_WAIT_S = 0.005
"""How long the first request of a batch waits for others to join it."""


class VLLMBackend:
    supports_completion = True
    supports_logprobs = True
    logprob_strategy = "prompt-logprobs"

    def __init__(
        self,
        spec: str,
        model: str,
        config: ClientConfig,
        *,
        engine: Any = None,
        sampling_params: Any = None,
        max_batch: int = MAX_BATCH,
        wait_s: float = BATCH_WAIT_S,
    ) -> None:
        """``engine`` / ``sampling_params``: a ``vllm.LLM`` and ``vllm.SamplingParams`` stand-in (tests); by
        default vllm is imported and ``vllm.LLM(model, enable_prefix_caching=True)`` is built."""
        if engine is None or sampling_params is None:
            try:
                import vllm
            except ImportError as e:
                raise UserError(f"{spec} needs vLLM, which is not installed; run: pip install autointerp[vllm]") from e
            dtype = config.dtype if config.dtype != "float32" else "auto"
            engine = engine or vllm.LLM(model=model, dtype=dtype, enable_prefix_caching=True)
            sampling_params = sampling_params or vllm.SamplingParams
        self.spec = spec
        self.model = model
        self._llm: Any = engine
        self._params_cls: Any = sampling_params
        self.generate_batcher: MicroBatcher[tuple[str, Any], Any] = MicroBatcher(
            self._generate_batch, max_batch=max_batch, wait_s=wait_s, describe=f"{spec} generate"
        )
        self.chat_batcher: MicroBatcher[tuple[list[dict[str, str]], Any], Any] = MicroBatcher(
            self._chat_batch, max_batch=max_batch, wait_s=wait_s, describe=f"{spec} chat"
        )

    async def aclose(self) -> None:
        return None

    def _params(
        self, max_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...], seed: int | None, **extra: int
    ) -> Any:
        return self._params_cls(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop) or None, seed=seed, **extra
        )

    def _generate_batch(self, items: list[tuple[str, Any]]) -> list[Any]:
        try:
            return list(self._llm.generate([p for p, _ in items], [sp for _, sp in items], use_tqdm=False))
        except Exception as e:  # every request of the batch fails with the engine's reason
            raise LLMError(f"{self.spec}: generate failed: {e}") from e

    def _chat_batch(self, items: list[tuple[list[dict[str, str]], Any]]) -> list[Any]:
        try:
            return list(self._llm.chat([m for m, _ in items], [sp for _, sp in items], use_tqdm=False))
        except Exception as e:
            raise LLMError(f"{self.spec}: chat failed: {e}") from e

    @staticmethod
    def _usage(out: Any, completion_tokens: int) -> Usage:
        cached = getattr(out, "num_cached_tokens", None)
        prompt = len(out.prompt_token_ids or [])
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            requests=1,
            cached_prompt_tokens=min(int(cached), prompt) if isinstance(cached, int) else 0,
            cache_reported=int(isinstance(cached, int)),
        )

    def _response(self, out: Any) -> LLMResponse:
        c = out.outputs[0]
        return LLMResponse(
            text=c.text, logprobs=self._token_logprobs(c), usage=self._usage(out, len(c.token_ids)), model=self.model
        )

    @staticmethod
    def _token_logprobs(c: Any) -> list[TokenLogprobs]:
        """Each generated token with its top alternatives (``SamplingParams(logprobs=k)``: per token a dict token
        id -> Logprob that holds the sampled token too); empty when not asked or not given."""
        got = getattr(c, "logprobs", None)
        if not got or len(got) != len(c.token_ids):
            return []
        out = []
        for tid, alts in zip(c.token_ids, got, strict=True):
            if not alts or tid not in alts:
                return []
            top = {str(v.decoded_token): float(v.logprob) for v in alts.values()}
            out.append(TokenLogprobs(top=top, token=str(alts[tid].decoded_token)))
        return out

    async def chat(self, request: ChatRequest) -> LLMResponse:
        extra = {"logprobs": request.top_logprobs} if request.top_logprobs > 0 else {}
        p = self._params(request.max_tokens, request.temperature, request.top_p, request.stop, request.seed, **extra)
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        return self._response(await self.chat_batcher.submit((msgs, p)))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        p = self._params(request.max_tokens, request.temperature, request.top_p, request.stop, request.seed)
        return self._response(await self.generate_batcher.submit((request.prompt, p)))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        check_positions(request)
        p = self._params(1, 0.0, 1.0, (), None, prompt_logprobs=request.top_k)
        out = await self.generate_batcher.submit((request.prompt, p))
        plp = [
            None
            if d is None
            else {str(tid): {"logprob": v.logprob, "decoded_token": v.decoded_token} for tid, v in d.items()}
            for d in out.prompt_logprobs
        ]
        got = align_prompt_logprobs(request, plp, list(out.prompt_token_ids))
        if got is None:
            raise LLMError(
                f"{self.spec}: positions are not at token boundaries of the prompt (or tokens do not "
                "decode back to the prompt); put each position right after a complete token"
            )
        return LLMResponse(logprobs=got, usage=self._usage(out, 1), model=self.model)
