"""``make_client(spec, config)``: parse a spec, build its backend, and wrap it for production use.

Specs:

- ``openai:<model>``: OpenAI (key: ``$OPENAI_API_KEY`` or the keys file)
- ``anthropic:<model>``: Anthropic (key: ``$ANTHROPIC_API_KEY`` or the keys file)
- ``openai-compatible:<base_url>/<model>``: any OpenAI-compatible server (vLLM, OpenRouter, llama.cpp).
  The base URL ends at ``/v1`` when the URL contains one (so models may contain slashes, e.g.
  ``openai-compatible:https://openrouter.ai/api/v1/meta-llama/llama-3.1-8b-instruct``), else at the last
  ``/``. Key: read from the variable named by ``api_key_env`` (e.g. OPENROUTER_API_KEY) when set,
  else a dummy one (``$OPENAI_API_KEY`` is never sent to another server).
- ``vllm-server:<base_url>/<model>``: like ``openai-compatible:``, and ``top_logprobs`` uses vLLM's
  ``prompt_logprobs`` extension (one request, falls back to per-position completions if not available).
- ``vllm:<model>``: vLLM's offline engine in this process (``pip install autointerp[vllm]``, CUDA).
- ``local:<name>``: an embedded GGUF (``qwen2.5-coder-1.5b``, ``smollm2-135m``, ...) or a ``.gguf`` path,
  served by in-process llama.cpp on loopback.
- ``transformers:<name-or-path>``: a local Hugging Face causal LM (embedded subject models by name).

The returned :class:`ManagedClient` = usage meter -> response cache (+ coalescing) -> retries / timeouts /
concurrency / rate limits -> backend. No key is needed to import anything; a missing key is a
:class:`UserError` when the client is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    CompletionRequest,
    LLMClient,
    LLMResponse,
    TopLogprobsRequest,
)
from autointerp.llm.cache import CachedClient, ResponseCache
from autointerp.llm.reliable import ReliableClient
from autointerp.llm.usage import MeteredClient, PriceTable, UsageMeter

KINDS = ("openai", "anthropic", "openai-compatible", "vllm-server", "vllm", "local", "transformers")

DEFAULT_KEYS_FILE = Path("~/.config/autointerp/api_keys.json")


def split_spec(spec: str) -> tuple[str, str]:
    """``"kind:rest"`` -> (kind, rest), checking the kind."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in KINDS:
        raise UserError(
            f"bad LLM spec {spec!r}; write KIND:MODEL with KIND one of {', '.join(KINDS)}, "
            "e.g. local:qwen2.5-coder-1.5b or openai:gpt-4o-mini"
        )
    return kind, rest


def split_base_url(rest: str, spec: str) -> tuple[str, str]:
    """``http://host:8080/v1/qwen`` -> (``http://host:8080/v1``, ``qwen``)."""
    if not rest.startswith(("http://", "https://")):
        raise UserError(
            f"bad spec {spec!r}: expected BASE_URL/MODEL, e.g. openai-compatible:http://127.0.0.1:8080/v1/qwen"
        )
    i = rest.find("/v1/")
    if i >= 0:
        base, model = rest[: i + 3], rest[i + 4 :]
    else:
        base, _, model = rest.rpartition("/")
    if not model or base.endswith("//") or base in ("http:", "https:"):
        raise UserError(f"bad spec {spec!r}: no model after the base URL; write BASE_URL/MODEL")
    return base, model


def api_key(provider: str, config: ClientConfig, *, required: bool) -> str | None:
    """The key from the environment (``api_key_env`` or ``<PROVIDER>_API_KEY``), else the keys file."""
    env = config.api_key_env or f"{provider.upper()}_API_KEY"
    value = os.environ.get(env)
    if value:
        return value
    path = (config.api_keys_file or DEFAULT_KEYS_FILE).expanduser()
    if path.is_file():
        try:
            keys = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f'cannot read API keys file {path} ({e}); write JSON like {{"{provider}": "KEY"}}') from e
        if isinstance(keys, dict) and isinstance(keys.get(provider), str) and keys[provider]:
            return str(keys[provider])
    if required:
        raise UserError(
            f'no API key for {provider}: set {env} (export {env}=...) or put {{"{provider}": "KEY"}} in {path}'
        )
    return None


def make_backend(spec: str, config: ClientConfig) -> LLMClient:
    """The bare backend for ``spec`` (no retries, cache or metering)."""
    kind, rest = split_spec(spec)
    if kind == "openai":
        from autointerp.llm.openai_backend import OpenAIBackend

        key = api_key("openai", config, required=True)
        assert key is not None
        base = os.environ.get("OPENAI_BASE_URL") or None
        return OpenAIBackend(
            spec, rest, api_key=key, base_url=base, timeout_s=config.timeout_s, use_max_completion_tokens=True
        )
    if kind == "anthropic":
        from autointerp.llm.anthropic_backend import AnthropicBackend

        key = api_key("anthropic", config, required=True)
        assert key is not None
        base = os.environ.get("ANTHROPIC_BASE_URL") or None
        return AnthropicBackend(spec, rest, api_key=key, base_url=base, timeout_s=config.timeout_s)
    if kind in ("openai-compatible", "vllm-server"):
        from autointerp.llm.openai_backend import OpenAIBackend

        base, model = split_base_url(rest, spec)
        # Never send the user's OpenAI key to another server unless asked to (api_key_env).
        key = (api_key("openai-compatible", config, required=True) if config.api_key_env else None) or "none"
        return OpenAIBackend(
            spec,
            model,
            api_key=key,
            base_url=base,
            timeout_s=config.timeout_s,
            use_prompt_logprobs=kind == "vllm-server",
            direct_http=True,
        )
    if kind == "local":
        from autointerp.llm.local import LocalBackend

        return LocalBackend(spec, rest, config)
    if kind == "transformers":
        from autointerp.llm.transformers_backend import TransformersBackend

        return TransformersBackend.load(spec, rest, config)
    from autointerp.llm.vllm_backend import VLLMBackend

    return VLLMBackend(spec, rest, config)


class ManagedClient:
    """What :func:`make_client` returns: an :class:`LLMClient` with ``meter``, ``cache_stats()`` and ``aclose()``.

    Use one client within one event loop (its semaphore, rate limiters and HTTP connections belong to the
    loop that first uses them); build a new one for another ``asyncio.run``.
    """

    def __init__(
        self,
        backend: LLMClient,
        config: ClientConfig,
        meter: UsageMeter,
        cache: ResponseCache | None,
        owns_cache: bool = False,
    ) -> None:
        self.backend = backend
        self.config = config
        self.meter = meter
        self.reliable = ReliableClient(backend, config)
        inner: LLMClient = self.reliable
        self.cached: CachedClient | None = None
        if cache is not None:
            self.cached = CachedClient(inner, cache)
            inner = self.cached
        self._cache = cache
        self._owns_cache = owns_cache
        self._outer = MeteredClient(inner, meter)
        self.spec = backend.spec
        self.supports_completion = backend.supports_completion
        self.supports_logprobs = backend.supports_logprobs

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._outer.chat(request)

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._outer.complete(request)

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._outer.top_logprobs(request)

    def cache_stats(self) -> dict[str, Any]:
        """Entries/bytes of the cache file and this client's hits, misses and coalesced requests."""
        out: dict[str, Any] = self.cached.stats() if self.cached is not None else {"enabled": False}
        out["attempts"] = self.reliable.attempts
        out["retries"] = self.reliable.retries
        return out

    def counters(self) -> dict[str, int]:
        """This client's counters since it was built: attempts sent (retries included), retries, cache hits and
        misses, requests coalesced with an identical one in flight, and requests that failed for good."""
        cached = self.cached
        return {
            "attempts": self.reliable.attempts,
            "retries": self.reliable.retries,
            "cache_hits": cached.hits if cached is not None else 0,
            "cache_misses": cached.misses if cached is not None else 0,
            "coalesced": cached.coalesced if cached is not None else 0,
            "failures": self.meter.failures.get(self.spec, 0),
        }

    async def aclose(self) -> None:
        """Close the backend (and stop a local server nobody else uses) and the cache file if this client
        opened it."""
        await self._outer.aclose()
        if self._cache is not None and self._owns_cache:
            self._cache.close()
            self._cache = None

    async def __aenter__(self) -> ManagedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def make_client(
    spec: str,
    config: ClientConfig | None = None,
    *,
    meter: UsageMeter | None = None,
    cache: ResponseCache | None = None,
) -> ManagedClient:
    """Build the client for ``spec`` (see the module doc). ``meter`` and ``cache`` may be shared by clients."""
    config = config or ClientConfig()
    if config.timeout_s <= 0:
        raise UserError(f"timeout_s must be positive (got {config.timeout_s}); every request needs a timeout")
    backend = make_backend(spec, config)
    if meter is None:
        meter = UsageMeter(prices=PriceTable.load(config.prices_path))
    owns = config.cache and cache is None
    if owns:
        cache = ResponseCache(config.cache_path)
    return ManagedClient(backend, config, meter, cache if config.cache else None, owns_cache=owns)
