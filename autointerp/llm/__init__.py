"""LLM clients behind one small async interface (see ``base.py``)."""

from autointerp.llm.base import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    LLMClient,
    LLMError,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
)

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "LLMClient",
    "LLMError",
    "LLMResponse",
    "TokenLogprobs",
    "TopLogprobsRequest",
]
