"""LLM clients behind one small async interface (see ``base.py``); build one with :func:`make_client`."""

from autointerp.llm.base import (
    ChatMessage,
    ChatRequest,
    ClientConfig,
    CompletionRequest,
    LLMClient,
    LLMError,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
)
from autointerp.llm.cache import ResponseCache
from autointerp.llm.factory import ManagedClient, make_client
from autointerp.llm.usage import PriceTable, UsageMeter

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "ClientConfig",
    "CompletionRequest",
    "LLMClient",
    "LLMError",
    "LLMResponse",
    "ManagedClient",
    "PriceTable",
    "ResponseCache",
    "TokenLogprobs",
    "TopLogprobsRequest",
    "UsageMeter",
    "make_client",
]
