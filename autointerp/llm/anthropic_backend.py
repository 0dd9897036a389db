"""Anthropic backend (``AsyncAnthropic``, Messages API). Chat only: no raw completions, no logprobs.

System messages of a :class:`ChatRequest` are joined into the ``system`` parameter. SDK retries are off
(``max_retries=0``), its timeout is set; retries happen in :mod:`autointerp.llm.reliable`. A shared prefix
(system prompt and all messages but the last) long enough for Anthropic's prompt cache is marked with
``cache_control``; usage records the cache reads and writes the API reports.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from autointerp.llm.base import (
    Capabilities,
    ChatRequest,
    CompletionRequest,
    LLMResponse,
    TopLogprobsRequest,
    Unsupported,
)
from autointerp.llm.errors import garbage, map_exception
from autointerp.records import Usage

logger = logging.getLogger(__name__)


class AnthropicBackend:
    supports_completion = False
    supports_logprobs = False
    logprob_strategy = "none"

    def __init__(self, spec: str, model: str, *, api_key: str, base_url: str | None, timeout_s: float) -> None:
        from anthropic import AsyncAnthropic

        self.spec = spec
        self.model = model
        self.capabilities = Capabilities(
            {
                "completions": "the Anthropic API has no raw completions",
                "chat_logprobs": "the Anthropic API gives no logprobs",
            }
        )
        self._client = AsyncAnthropic(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)
        params = inspect.signature(self._client.messages.create).parameters
        self._sampling_params = "temperature" in params
        self._warned = False

    async def aclose(self) -> None:
        await self._client.close()

    async def chat(self, request: ChatRequest) -> LLMResponse:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages: list[dict[str, Any]] = [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ]
        args: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens, "messages": messages}
        if system:
            args["system"] = system
        mark_cache_prefix(args, min_cache_tokens(self.model))
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
        read = getattr(u, "cache_read_input_tokens", None)
        written = int(getattr(u, "cache_creation_input_tokens", 0) or 0)
        prompt = int(getattr(u, "input_tokens", 0) or 0) + int(read or 0) + written
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=int(getattr(u, "output_tokens", 0) or 0),
            requests=1,
            cached_prompt_tokens=int(read or 0),
            cache_write_tokens=written,
            cache_reported=int(isinstance(read, int)),
        )
        return LLMResponse(text=text, usage=usage, model=str(getattr(r, "model", "") or self.model))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        raise Unsupported(f"{self.spec}: the Anthropic API has no raw completions; use chat", "completions")

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        raise Unsupported(
            f"{self.spec}: the Anthropic API returns no logprobs; use a local/openai-compatible backend", "completions"
        )


def min_cache_tokens(model: str) -> int:
    """The shortest prompt prefix (tokens) Anthropic caches for ``model``: 2,048 for Haiku 3/3.5, 4,096 for
    Haiku 4.5 and Opus 4.5, 1,024 for the others (Anthropic's prompt-caching documentation)."""
    m = model.lower()
    if "haiku-4-5" in m or "opus-4-5" in m:
        return 4096
    if "haiku" in m:
        return 2048
    return 1024


def mark_cache_prefix(args: dict[str, Any], min_tokens: int) -> None:
    """Mark the shared prefix of a messages request with ``cache_control`` when it is long enough to be cached.

    The shared prefix is the system prompt and every message before the last one (the template and the
    few-shot turns come first in autointerp's prompts; the last user message holds what varies). Its size
    is estimated at 4 characters a token, and ``min_tokens`` is the model's minimum; a shorter prefix is left
    unmarked."""
    messages: list[dict[str, Any]] = args["messages"]
    system = args.get("system")
    prefix_chars = len(system or "") + sum(len(str(m["content"])) for m in messages[:-1])
    if prefix_chars // 4 < min_tokens:
        return
    mark = {"type": "ephemeral"}
    if len(messages) > 1:
        last_shared = messages[-2]
        last_shared["content"] = [{"type": "text", "text": str(last_shared["content"]), "cache_control": mark}]
    elif system:
        args["system"] = [{"type": "text", "text": system, "cache_control": mark}]
