"""Anthropic backend (``AsyncAnthropic``, Messages API). Chat only: no raw completions, no logprobs.

System messages of a :class:`ChatRequest` are joined into the ``system`` parameter. SDK retries are off
(``max_retries=0``), its timeout is set; retries happen in :mod:`autointerp.llm.reliable`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from autointerp.llm.base import ChatRequest, CompletionRequest, LLMError, LLMResponse, TopLogprobsRequest
from autointerp.llm.errors import garbage, map_exception
from autointerp.records import Usage

logger = logging.getLogger(__name__)


class AnthropicBackend:
    supports_completion = False
    supports_logprobs = False

    def __init__(self, spec: str, model: str, *, api_key: str, base_url: str | None, timeout_s: float) -> None:
        from anthropic import AsyncAnthropic

        self.spec = spec
        self.model = model
        self._client = AsyncAnthropic(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)
        params = inspect.signature(self._client.messages.create).parameters
        self._sampling_params = "temperature" in params
        self._warned = False

    async def aclose(self) -> None:
        await self._client.close()

    async def chat(self, request: ChatRequest) -> LLMResponse:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages = [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"]
        args: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens, "messages": messages}
        if system:
            args["system"] = system
        # Newer SDKs (2.x) have no sampling parameters: send them only where the SDK still takes them.
        if self._sampling_params:
            args["temperature"] = request.temperature
            if request.top_p != 1.0:
                args["top_p"] = request.top_p
        elif (request.temperature, request.top_p) != (0.0, 1.0) and not self._warned:
            self._warned = True
            logger.info("%s: this anthropic SDK takes no temperature/top_p; they are not sent", self.spec)
        if request.stop:
            args["stop_sequences"] = list(request.stop)
        try:
            r = await self._client.messages.create(**args)
        except Exception as e:
            raise map_exception(e, self.spec) from e
        content = getattr(r, "content", None)
        if not isinstance(content, list):
            raise garbage(self.spec, "no content list in messages response")
        text = "".join(getattr(b, "text", "") or "" for b in content if getattr(b, "type", "") == "text")
        u = getattr(r, "usage", None)
        prompt = int(getattr(u, "input_tokens", 0) or 0) + int(getattr(u, "cache_read_input_tokens", 0) or 0)
        prompt += int(getattr(u, "cache_creation_input_tokens", 0) or 0)
        usage = Usage(prompt_tokens=prompt, completion_tokens=int(getattr(u, "output_tokens", 0) or 0), requests=1)
        return LLMResponse(text=text, usage=usage, model=str(getattr(r, "model", "") or self.model))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        raise LLMError(f"{self.spec}: the Anthropic API has no raw completions; use chat")

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        raise LLMError(f"{self.spec}: the Anthropic API returns no logprobs; use a local/openai-compatible backend")
