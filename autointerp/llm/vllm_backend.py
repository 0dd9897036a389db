"""``vllm:<model>``: vLLM's offline engine in this process (CUDA; ``pip install autointerp[vllm]``).

vllm is imported lazily, when the client is built. ``top_logprobs`` asks for ``prompt_logprobs`` of the
full prompt in one request and maps them to character positions (see
:func:`autointerp.llm.openai_backend.align_prompt_logprobs`). Calls run in a worker thread, one at a time.
Not exercised on CPU machines (vLLM needs CUDA); its tests skip where vllm is not installed.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TopLogprobsRequest,
)
from autointerp.llm.openai_backend import align_prompt_logprobs, check_positions
from autointerp.records import Usage


class VLLMBackend:
    supports_completion = True
    supports_logprobs = True
    logprob_strategy = "prompt-logprobs"

    def __init__(self, spec: str, model: str, config: ClientConfig) -> None:
        try:
            import vllm
        except ImportError as e:
            raise UserError(f"{spec} needs vLLM, which is not installed; run: pip install autointerp[vllm]") from e
        self._vllm: Any = vllm
        self.spec = spec
        self.model = model
        self._llm: Any = vllm.LLM(model=model, dtype=config.dtype if config.dtype != "float32" else "auto")
        self._lock = threading.Lock()

    async def aclose(self) -> None:
        return None

    def _params(
        self, max_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...], seed: int | None, **extra: int
    ) -> Any:
        return self._vllm.SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop) or None, seed=seed, **extra
        )

    def _run_generate(self, prompt: str, params: Any) -> Any:
        with self._lock:
            return self._llm.generate([prompt], params, use_tqdm=False)[0]

    def _run_chat(self, messages: list[dict[str, str]], params: Any) -> Any:
        with self._lock:
            return self._llm.chat(messages, params, use_tqdm=False)[0]

    @staticmethod
    def _response(out: Any) -> LLMResponse:
        c = out.outputs[0]
        usage = Usage(prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(c.token_ids), requests=1)
        return LLMResponse(text=c.text, usage=usage)

    async def chat(self, request: ChatRequest) -> LLMResponse:
        p = self._params(request.max_tokens, request.temperature, request.top_p, request.stop, request.seed)
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        return self._response(await asyncio.to_thread(self._run_chat, msgs, p))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        p = self._params(request.max_tokens, request.temperature, request.top_p, request.stop, request.seed)
        return self._response(await asyncio.to_thread(self._run_generate, request.prompt, p))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        check_positions(request)
        p = self._params(1, 0.0, 1.0, (), None, prompt_logprobs=request.top_k)
        out = await asyncio.to_thread(self._run_generate, request.prompt, p)
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
        usage = Usage(prompt_tokens=len(out.prompt_token_ids), completion_tokens=1, requests=1)
        return LLMResponse(logprobs=got, usage=usage, model=self.model)
