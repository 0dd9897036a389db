"""Endpoint pools: one LLM client spread over several OpenAI-compatible endpoints, with failover.

Specs:

- ``openai-compatible:URL1,URL2,.../MODEL`` (or ``vllm-server:...``): the same model on several servers,
  e.g. ``openai-compatible:http://127.0.0.1:8001/v1,http://127.0.0.1:8002/v1/qwen``. Every URL but the last
  is a base URL; the last one ends with the model, as in a one-endpoint spec.
- ``pool:FILE.yaml``: a YAML file naming the model and each endpoint with its own limits::

      kind: openai-compatible        # or vllm-server (default openai-compatible)
      model: qwen
      endpoints:
        - url: http://10.0.0.1:8000/v1
          max_concurrency: 32          # requests in flight on this endpoint (default: --llm-concurrency)
          requests_per_minute: 600     # optional token-bucket limits of this endpoint
          tokens_per_minute: 200000
        - http://10.0.0.2:8000/v1      # a bare URL takes the defaults

  Unknown keys, a malformed URL and an empty list are :class:`UserError` (one line, exit 2) before any
  request is sent.

Routing (:class:`PoolBackend`, which sits where a backend sits: under the response cache and the retry
layer): before the first request every endpoint is probed (``GET /models``); one that does not answer is
reported by name and starts cooled down, and the run goes on with the others. Each attempt goes to the
healthy endpoint with the most free capacity (in flight / its concurrency, ties to the one used least
recently), after that endpoint's own rate limits. A failure that speaks of the endpoint (refused or reset
connection, timeout, 5xx, garbage) counts against it: a connection failure or :data:`FAILURES_TO_COOL`
failures in a row take it out for a cool-down (:data:`COOL_DOWN_S`, doubling up to :data:`MAX_COOL_DOWN_S`
while it keeps failing), after which one ``GET /models`` probe must succeed before it takes requests again.
The failed attempt is raised as a retryable error, so the retry layer sends it again, and the router places
it on another endpoint: requests in flight on a dead endpoint finish elsewhere. An answer is returned once
per request, so nothing is lost or duplicated in the results (a server that died after computing an answer
may have computed it twice). When every endpoint is cooling down, an attempt waits for the first one to
come back (bounded by the retry layer's timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from autointerp.errors import UserError
from autointerp.llm.base import (
    Capabilities,
    ChatRequest,
    CompletionRequest,
    LLMError,
    LLMResponse,
    TopLogprobsRequest,
    capabilities_of,
)
from autointerp.llm.reliable import TokenBucket, estimate_tokens

logger = logging.getLogger(__name__)

FAILURES_TO_COOL = 3
"""Failures in a row (5xx, timeouts, garbage) after which an endpoint is taken out for a cool-down."""
COOL_DOWN_S = 1.0
"""First cool-down of a failing endpoint, in seconds."""
MAX_COOL_DOWN_S = 30.0
"""Longest cool-down: the cool-down doubles while the endpoint keeps failing its probes."""
ENDPOINT_KEYS = ("url", "max_concurrency", "requests_per_minute", "tokens_per_minute")
POOL_KEYS = ("kind", "model", "endpoints")

R = TypeVar("R", ChatRequest, CompletionRequest, TopLogprobsRequest)


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint of a pool: its base URL and its own limits (None: the client's)."""

    url: str
    max_concurrency: int | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


@dataclass(frozen=True)
class PoolSpec:
    kind: str
    """openai-compatible or vllm-server."""
    model: str
    endpoints: tuple[EndpointSpec, ...]

    def endpoint_spec(self, i: int) -> str:
        """The one-endpoint spec of endpoint ``i`` (how it is named in logs and errors)."""
        return f"{self.kind}:{self.endpoints[i].url}/{self.model}"


def is_pool(spec: str) -> bool:
    """True for ``pool:FILE`` and for URL specs that list several endpoints."""
    kind, _, rest = spec.partition(":")
    return kind == "pool" or (kind in ("openai-compatible", "vllm-server") and "," in rest)


def _check_url(url: str, spec: str) -> str:
    from autointerp.llm.factory import split_base_url

    base, _ = split_base_url(url.rstrip("/") + "/m", spec)  # the same checks as a one-endpoint spec
    return base


def parse_pool(spec: str) -> PoolSpec:
    """The :class:`PoolSpec` of a pool spec (see the module doc); UserError on anything malformed."""
    kind, _, rest = spec.partition(":")
    if kind == "pool":
        return _read_pool_file(Path(rest).expanduser(), spec)
    from autointerp.llm.factory import split_base_url

    parts = [p.strip() for p in rest.split(",")]
    if any(not p for p in parts):
        raise UserError(f"bad spec {spec!r}: an empty entry in the endpoint list; write URL1,URL2,.../MODEL")
    last_base, model = split_base_url(parts[-1], spec)
    bases = [_check_url(p, spec) for p in parts[:-1]] + [last_base]
    return PoolSpec(kind, model, tuple(EndpointSpec(b) for b in bases))


def _read_pool_file(path: Path, spec: str) -> PoolSpec:
    import yaml

    example = "see autointerp/llm/pool.py for the format (kind, model, endpoints: [{url, max_concurrency, ...}])"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read endpoint pool {path} ({str(e).splitlines()[0]}); {example}") from e
    if not isinstance(data, dict):
        raise UserError(f"endpoint pool {path} is not a YAML mapping; {example}")
    unknown = sorted(set(data) - set(POOL_KEYS))
    if unknown:
        raise UserError(f"endpoint pool {path}: unknown key(s) {', '.join(unknown)}; use {', '.join(POOL_KEYS)}")
    kind = str(data.get("kind", "openai-compatible"))
    if kind not in ("openai-compatible", "vllm-server"):
        raise UserError(f"endpoint pool {path}: kind {kind!r} is not openai-compatible or vllm-server")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise UserError(f"endpoint pool {path}: no model; add model: NAME")
    entries = data.get("endpoints")
    if not isinstance(entries, list) or not entries:
        raise UserError(
            f"endpoint pool {path}: the endpoint list is empty; add endpoints: [- url: http://HOST:PORT/v1]"
        )
    endpoints = []
    for n, entry in enumerate(entries, start=1):
        if isinstance(entry, str):
            entry = {"url": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise UserError(f"endpoint pool {path}: endpoint {n} has no url")
        bad = sorted(set(entry) - set(ENDPOINT_KEYS))
        if bad:
            raise UserError(
                f"endpoint pool {path}: endpoint {n}: unknown key(s) {', '.join(bad)}; use {', '.join(ENDPOINT_KEYS)}"
            )
        limits: dict[str, float] = {}
        for key in ENDPOINT_KEYS[1:]:
            value = entry.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"endpoint pool {path}: endpoint {n}: {key} must be a positive number, got {value!r}")
            limits[key] = float(value)
        conc = limits.get("max_concurrency")
        endpoints.append(
            EndpointSpec(
                _check_url(entry["url"], spec),
                max_concurrency=int(conc) if conc is not None else None,
                requests_per_minute=limits.get("requests_per_minute"),
                tokens_per_minute=limits.get("tokens_per_minute"),
            )
        )
    return PoolSpec(kind, model.strip(), tuple(endpoints))


class _Endpoint:
    def __init__(self, name: str, backend: Any, capacity: int, spec: EndpointSpec, index: int) -> None:
        self.name = name
        self.backend = backend
        self.capacity = capacity
        self.index = index
        self.in_flight = 0
        self.last_used = 0.0
        self.failures = 0
        self.down_until = 0.0
        self.cool_down = COOL_DOWN_S
        self.probing = False
        self.needs_probe = False
        self.answered = 0
        self.failed = 0
        self.rpm = TokenBucket(spec.requests_per_minute) if spec.requests_per_minute else None
        self.tpm = TokenBucket(spec.tokens_per_minute) if spec.tokens_per_minute else None

    def healthy(self, now: float) -> bool:
        return not self.needs_probe and now >= self.down_until


class PoolBackend:
    """Routes each request to one of several endpoint backends (see the module doc)."""

    def __init__(self, spec: str, pool: PoolSpec, backends: list[Any], capacities: list[int]) -> None:
        self.spec = spec
        self.pool = pool
        self.endpoints = [
            _Endpoint(pool.endpoint_spec(i), b, c, pool.endpoints[i], i)
            for i, (b, c) in enumerate(zip(backends, capacities, strict=True))
        ]
        self.capabilities = capabilities_of(backends[0])
        """One for the whole pool (its endpoints serve one model): what one endpoint refused, none is asked."""
        for b in backends[1:]:
            if isinstance(getattr(b, "capabilities", None), Capabilities):
                b.capabilities = self.capabilities
        self._changed: asyncio.Condition | None = None
        self._started: asyncio.Task[None] | None = None
        self._waiting = 0

    @property
    def supports_completion(self) -> bool:
        return bool(self.endpoints[0].backend.supports_completion)

    @property
    def supports_logprobs(self) -> bool:
        return bool(self.endpoints[0].backend.supports_logprobs)

    @property
    def capacity(self) -> int:
        return sum(e.capacity for e in self.endpoints)

    @property
    def logprob_strategy(self) -> str:
        return str(getattr(self.endpoints[0].backend, "logprob_strategy", "none"))

    async def settle_logprob_strategy(self) -> str:
        """Settle the first endpoint's strategy and give it to the others (they serve the same model)."""
        settle = getattr(self.endpoints[0].backend, "settle_logprob_strategy", None)
        strategy = str(await settle()) if settle is not None else self.logprob_strategy
        for e in self.endpoints[1:]:
            if hasattr(e.backend, "logprob_strategy"):
                e.backend.logprob_strategy = strategy
        return strategy

    async def _start(self) -> None:
        """Probe every endpoint once, together: one that does not answer is reported by name and starts cooled
        down (it is probed again later); the run goes on with the others."""

        async def probe(e: _Endpoint) -> None:
            try:
                await asyncio.wait_for(e.backend.probe(), timeout=10.0)
            except Exception as err:
                reason = err.reason if isinstance(err, LLMError) else type(err).__name__
                logger.warning("endpoint %s is unreachable (%s); the pool goes on without it for now", e.name, reason)
                self._cool(e, time.monotonic())

        await asyncio.gather(*(probe(e) for e in self.endpoints))

    def stats(self) -> dict[str, dict[str, int]]:
        """Per endpoint: answers, failed attempts, and whether it is cooling down now."""
        now = time.monotonic()
        return {
            e.name: {"answered": e.answered, "failed": e.failed, "down": int(not e.healthy(now))}
            for e in self.endpoints
        }

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._route(request, lambda b: b.chat(request))

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._route(request, lambda b: b.complete(request))

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._route(request, lambda b: b.top_logprobs(request))

    async def aclose(self) -> None:
        for e in self.endpoints:
            await e.backend.aclose()

    # -- routing ---------------------------------------------------------------------------------
    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _pick(self) -> _Endpoint | None:
        """Take a slot on the healthy endpoint with the most free capacity, if any (no await: atomic in the loop);
        start the probe of any endpoint whose cool-down is over."""
        now = time.monotonic()
        best: _Endpoint | None = None
        for e in self.endpoints:
            if e.needs_probe and now >= e.down_until and not e.probing:
                e.probing = True
                asyncio.get_running_loop().create_task(self._probe(e))
            if e.healthy(now) and e.in_flight < e.capacity:
                if best is None or (e.in_flight / e.capacity, e.last_used) < (
                    best.in_flight / best.capacity,
                    best.last_used,
                ):
                    best = e
        if best is not None:
            best.in_flight += 1
            best.last_used = now
        return best

    async def _acquire(self) -> _Endpoint:
        """The healthy endpoint with the most free capacity; waits while all are full or cooling down."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        if not self._started.done():
            await asyncio.shield(self._started)
        got = self._pick()
        if got is not None:
            return got
        cond = self._condition()
        async with cond:
            self._waiting += 1
            try:
                while True:
                    got = self._pick()
                    if got is not None:
                        return got
                    now = time.monotonic()
                    waits = [e.down_until - now for e in self.endpoints if e.down_until > now]
                    try:
                        await asyncio.wait_for(cond.wait(), timeout=min(waits) if waits else None)
                    except TimeoutError:
                        pass
            finally:
                self._waiting -= 1

    async def _release(self, e: _Endpoint) -> None:
        e.in_flight -= 1
        if self._waiting:
            cond = self._condition()
            async with cond:
                cond.notify()

    def _cool(self, e: _Endpoint, now: float) -> None:
        e.down_until = now + e.cool_down
        e.needs_probe = True
        e.cool_down = min(MAX_COOL_DOWN_S, e.cool_down * 2)

    async def _probe(self, e: _Endpoint) -> None:
        """One ``GET /models`` to a cooled-down endpoint: back in the pool on success, cooled again on failure."""
        ok, why = False, ""
        try:
            await asyncio.wait_for(e.backend.probe(), timeout=10.0)
            ok = True
        except Exception as err:  # any failure keeps it out
            why = f"{type(err).__name__}: {str(err)[:100]}"
        cond = self._condition()
        async with cond:
            e.probing = False
            if ok:
                logger.info("endpoint %s answers again; back in the pool", e.name)
                e.needs_probe = False
                e.failures = 0
                e.cool_down = COOL_DOWN_S
            else:
                logger.info("endpoint %s still fails its probe (%s)", e.name, why)
                self._cool(e, time.monotonic())
            cond.notify_all()

    async def _route(self, request: R, call: Callable[[Any], Awaitable[LLMResponse]]) -> LLMResponse:
        e = await self._acquire()
        try:
            if e.rpm is not None:
                await e.rpm.acquire()
            if e.tpm is not None:
                await e.tpm.acquire(estimate_tokens(request))
            response = await call(e.backend)
        except LLMError as err:
            await self._failed(e, err.status is None and err.retryable, err.retryable and err.status != 429)
            if err.retryable:
                raise LLMError(
                    f"{e.name}: {err.reason}", status=err.status, retryable=True, retry_after=err.retry_after
                ) from err
            raise
        except (asyncio.CancelledError, TimeoutError):
            await self._failed(e, False, True)  # the retry layer's timeout: counts against the endpoint
            raise
        except BaseException:
            await self._release(e)
            raise
        e.answered += 1
        e.failures = 0
        await self._release(e)
        return response

    async def _failed(self, e: _Endpoint, connection: bool, counts: bool) -> None:
        cond = self._condition()
        async with cond:
            e.in_flight -= 1
            if counts:
                e.failed += 1
                e.failures += 1
                if (connection or e.failures >= FAILURES_TO_COOL) and not e.needs_probe:
                    logger.warning(
                        "endpoint %s failing (%d in a row); cooling down for %.1fs", e.name, e.failures, e.cool_down
                    )
                    self._cool(e, time.monotonic())
            cond.notify_all()
