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
  ``openai-compatible:`` servers get ``echo`` prompt logprobs where they serve them, else the prefix list
  (see :mod:`autointerp.llm.openai_backend`).
- ``vllm:<model>``: vLLM's offline engine in this process (``pip install autointerp[vllm]``, CUDA).
- ``local:<name>``: an embedded GGUF (``qwen2.5-coder-1.5b``, ``smollm2-135m``, ...) or a ``.gguf`` path,
  served by in-process llama.cpp on loopback.
- ``transformers:<name-or-path>``: a local Hugging Face causal LM (embedded subject models by name).
- ``openai-compatible:URL1,URL2,.../MODEL`` or ``pool:FILE.yaml``: an endpoint pool with failover
  (:mod:`autointerp.llm.pool`).

The returned :class:`ManagedClient` = usage meter -> response cache (+ coalescing) -> retries / timeouts /
concurrency / rate limits -> backend. No key is needed to import anything; a missing key is a
:class:`UserError` when the client is built.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from autointerp.errors import UserError
from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    ClientWrapper,
    CompletionRequest,
    LLMClient,
    LLMResponse,
    TopLogprobsRequest,
)
from autointerp.llm.cache import CachedClient, ResponseCache
from autointerp.llm.pool import PoolBackend, is_pool, parse_pool
from autointerp.llm.reliable import ReliableClient
from autointerp.llm.usage import MeteredClient, PriceTable, UsageMeter

KINDS = ("openai", "anthropic", "openai-compatible", "vllm-server", "vllm", "local", "transformers", "pool")

logger = logging.getLogger(__name__)

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
    """``http://host:8080/v1/qwen`` -> (``http://host:8080/v1``, ``qwen``); strict: a host, a valid port and a
    model after the base URL, or a UserError naming what is missing."""
    example = "e.g. openai-compatible:http://127.0.0.1:8080/v1/qwen"
    try:
        url = urlsplit(rest)
        url.port  # noqa: B018  (raises ValueError on a port that is not a number in 0..65535)
    except ValueError as e:
        raise UserError(f"bad spec {spec!r}: {rest!r} is not a valid URL ({e}); write BASE_URL/MODEL, {example}") from e
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(f"bad spec {spec!r}: expected http(s)://HOST[:PORT]/.../MODEL, {example}")
    if url.query or url.fragment:
        raise UserError(f"bad spec {spec!r}: the URL may not have a query or fragment; write BASE_URL/MODEL, {example}")
    origin = f"{url.scheme}://{url.netloc}"
    path = url.path
    i = path.find("/v1/")
    if i >= 0:
        base_path, model = path[: i + 3], path[i + 4 :]
    else:
        base_path, _, model = path.rpartition("/")
    model = model.strip("/")
    if not model:
        raise UserError(f"bad spec {spec!r}: it names no model after the base URL; write BASE_URL/MODEL, {example}")
    return origin + base_path, model


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


def check_spec(spec: str, config: ClientConfig) -> None:
    """Every check of ``spec`` that needs no model and no network: its syntax (a URL spec names a model),
    its API key, a local model's name or file, vLLM being installed. Raises :class:`UserError`; builds nothing,
    so a run can validate all its specs before it writes a file."""
    kind, rest = split_spec(spec)
    if is_pool(spec):
        parse_pool(spec)
        if config.api_key_env:
            api_key("openai-compatible", config, required=True)
    elif kind in ("openai", "anthropic"):
        api_key(kind, config, required=True)
    elif kind in ("openai-compatible", "vllm-server"):
        split_base_url(rest, spec)
        if config.api_key_env:
            api_key("openai-compatible", config, required=True)
    elif kind == "local":
        from autointerp.llm.local import EXPLAINER_MODELS

        if rest.endswith(".gguf") or "/" in rest:
            if not Path(rest).expanduser().is_file():
                raise UserError(
                    f"local model file {rest} does not exist; give an existing .gguf path or one of "
                    f"{', '.join(EXPLAINER_MODELS)}"
                )
        elif rest not in EXPLAINER_MODELS:
            raise UserError(f"unknown local model {rest!r}; use one of {', '.join(EXPLAINER_MODELS)} or a .gguf path")
    elif kind == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UserError(f"{spec} needs vLLM, which is not installed; run: pip install autointerp[vllm]")


def probe_endpoint(spec: str, timeout_s: float = 10.0) -> None:
    """One quick ``GET <base>/models`` to an ``openai-compatible:`` / ``vllm-server:`` endpoint; a UserError
    naming the endpoint when it refuses the connection, does not answer within ``timeout_s`` or answers
    with an error status. Other kinds are not probed (their keys and names are checked by :func:`check_spec`)."""
    import urllib.error
    import urllib.request

    kind, rest = split_spec(spec)
    if is_pool(spec):
        pool = parse_pool(spec)
        down = {pool.endpoint_spec(i): unreachable(e.url, timeout_s) for i, e in enumerate(pool.endpoints)}
        for name, reason in down.items():
            if reason is not None:
                logger.warning("endpoint %s is unreachable (%s); the run goes on with the others", name, reason)
        if all(r is not None for r in down.values()):
            raise UserError(f"{spec}: no endpoint of the pool answers ({'; '.join(map(str, down.values()))})")
        return
    if kind not in ("openai-compatible", "vllm-server"):
        return
    base, _ = split_base_url(rest, spec)
    url = base.rstrip("/") + "/models"
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as the backend: no env proxies
        with opener.open(url, timeout=timeout_s) as resp:
            resp.read(1 << 16)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return  # it answers; whether the key is good shows on the first request
        hint = " (the base URL usually ends in /v1)" if e.code == 404 else ""
        raise UserError(f"{spec}: {url} answered HTTP {e.code}; check the URL of the server{hint}") from e
    except (TimeoutError, OSError) as e:  # URLError, connection refused, socket timeout
        why = getattr(e, "reason", None) or e
        if isinstance(why, TimeoutError) or isinstance(e, TimeoutError):
            why = f"no answer within {timeout_s:g}s"
        raise UserError(f"{spec}: cannot reach {url} ({why}); start the server or fix the URL") from e


def unreachable(base: str, timeout_s: float) -> str | None:
    """None when ``GET <base>/models`` gets any HTTP answer, else why it did not (refused, timed out, ...)."""
    import urllib.error
    import urllib.request

    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(base.rstrip("/") + "/models", timeout=timeout_s) as resp:
            resp.read(1 << 16)
    except urllib.error.HTTPError:
        return None  # it answers
    except (TimeoutError, OSError) as e:
        return str(getattr(e, "reason", None) or e)
    return None


def backend_timeout(config: ClientConfig) -> float:
    """The transport's own timeout, a safety net above the retry layer's (which enforces ``timeout_s`` or the
    fitted timeouts and counts them, see :mod:`autointerp.llm.reliable`)."""
    from autointerp.llm.reliable import FIT_MAX_S

    if config.timeout_s is not None:
        return config.timeout_s + 10.0
    return FIT_MAX_S * max(1, config.max_concurrency)


def make_backend(spec: str, config: ClientConfig) -> LLMClient:
    """The bare backend for ``spec`` (no retries, cache or metering)."""
    kind, rest = split_spec(spec)
    if is_pool(spec):
        return make_pool(spec, config)
    if kind == "openai":
        from autointerp.llm.openai_backend import OpenAIBackend

        key = api_key("openai", config, required=True)
        assert key is not None
        base = os.environ.get("OPENAI_BASE_URL") or None
        return OpenAIBackend(
            spec, rest, api_key=key, base_url=base, timeout_s=backend_timeout(config), use_max_completion_tokens=True
        )
    if kind == "anthropic":
        from autointerp.llm.anthropic_backend import AnthropicBackend

        key = api_key("anthropic", config, required=True)
        assert key is not None
        base = os.environ.get("ANTHROPIC_BASE_URL") or None
        return AnthropicBackend(spec, rest, api_key=key, base_url=base, timeout_s=backend_timeout(config))
    if kind in ("openai-compatible", "vllm-server"):
        from autointerp.llm.openai_backend import OpenAIBackend

        base, model = split_base_url(rest, spec)
        return http_backend(spec, kind, base, model, config)
    if kind == "local":
        from autointerp.llm.local import LocalBackend

        return LocalBackend(spec, rest, config)
    if kind == "transformers":
        from autointerp.llm.transformers_backend import TransformersBackend

        return TransformersBackend.load(spec, rest, config)
    from autointerp.llm.vllm_backend import VLLMBackend

    return VLLMBackend(spec, rest, config)


def http_backend(spec: str, kind: str, base: str, model: str, config: ClientConfig) -> LLMClient:
    """The backend of one ``openai-compatible:`` / ``vllm-server:`` endpoint."""
    from autointerp.llm.openai_backend import OpenAIBackend

    # Never send the user's OpenAI key to another server unless asked to (api_key_env).
    key = (api_key("openai-compatible", config, required=True) if config.api_key_env else None) or "none"
    return OpenAIBackend(
        spec,
        model,
        api_key=key,
        base_url=base,
        timeout_s=backend_timeout(config),
        logprob_strategy="prompt-logprobs" if kind == "vllm-server" else "auto",
        direct_http=True,
    )


def make_pool(spec: str, config: ClientConfig) -> PoolBackend:
    """A :class:`PoolBackend` over the endpoints of ``spec`` (it probes them before its first request)."""
    pool = parse_pool(spec)
    backends = [
        http_backend(pool.endpoint_spec(i), pool.kind, e.url, pool.model, config) for i, e in enumerate(pool.endpoints)
    ]
    caps = [e.max_concurrency or config.max_concurrency for e in pool.endpoints]
    return PoolBackend(spec, pool, backends, caps)


class ManagedClient(ClientWrapper):
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
        super().__init__(backend)
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

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._outer.chat(request)

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._outer.complete(request)

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._outer.top_logprobs(request)

    def logprob_strategy(self) -> str:
        """How this client's backend answers ``top_logprobs`` (e.g. ``prefix-list``, ``echo``,
        ``prompt-logprobs``, ``forward-pass``; ``none`` for chat-only backends)."""
        return str(getattr(self.backend, "logprob_strategy", "none"))

    async def settle_logprob_strategy(self) -> str:
        """Settle an ``auto`` strategy with one tiny request where the backend needs to ask; returns it."""
        settle = getattr(self.backend, "settle_logprob_strategy", None)
        if settle is not None:
            await settle()
        return self.logprob_strategy()

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
    if config.timeout_s is not None and config.timeout_s <= 0:
        raise UserError(f"timeout_s must be positive (got {config.timeout_s}), or unset for fitted timeouts")
    backend = make_backend(spec, config)
    if isinstance(backend, PoolBackend):
        # The retry layer bounds the whole pool: its endpoints' capacities together, and enough attempts to
        # place a request on every endpoint (each failed attempt moves it to another).
        attempts = max(config.max_attempts, len(backend.endpoints) + 2)
        config = replace(config, max_concurrency=backend.capacity, max_attempts=attempts)
    if meter is None:
        meter = UsageMeter(prices=PriceTable.load(config.prices_path))
    owns = config.cache and cache is None
    if owns:
        cache = ResponseCache(config.cache_path)
    return ManagedClient(backend, config, meter, cache if config.cache else None, owns_cache=owns)
