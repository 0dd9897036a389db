"""Retries, timeouts, bounded concurrency and rate limits, wrapped around any backend.

:class:`ReliableClient` runs every attempt of every request under a timeout, inside a semaphore of
``max_concurrency`` slots, after taking its share of a requests/min and a tokens/min token bucket.

Timeouts: ``timeout_s`` set: every attempt may take that long. ``timeout_s`` None (the default): the timeout
fits the request (:func:`fitted_timeout`: a base plus the time a slow server needs to read the prompt and
write ``max_tokens``), and it is pushed back while the endpoint keeps answering this client's other
requests (a queue behind a busy server is not a stall), up to ``max_concurrency`` times the fitted time.
A request whose attempts time out twice fails at once, naming the endpoint ("stalled"), so a server that
accepts connections but never answers is reported within a few minutes, not after 5 x 600 s.

Retryable failures (429, 5xx, timeouts, connection errors, truncated or garbage bodies) are retried
by tenacity with exponential backoff and full jitter, waiting at least as long as a ``Retry-After`` header
asks (capped at ``max_backoff_s``); 400/401/403/404 fail at once. A request that fails for good raises
:class:`LLMError` whose reason names the last failure and the number of attempts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    ClientWrapper,
    CompletionRequest,
    LLMClient,
    LLMError,
    LLMResponse,
    TopLogprobsRequest,
    Unsupported,
)
from autointerp.llm.errors import map_exception

logger = logging.getLogger(__name__)

R = TypeVar("R", ChatRequest, CompletionRequest, TopLogprobsRequest)


class TokenBucket:
    """Async token bucket: ``rate_per_minute`` units refill continuously, bursts up to ``capacity``."""

    def __init__(self, rate_per_minute: float, capacity: float | None = None) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate = rate_per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, rate_per_minute / 6.0)
        self.level = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # a request bigger than the bucket waits for a full bucket
        async with self._lock:  # FIFO: waiters are served in order
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
                self.updated = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


FIT_BASE_S = 30.0
"""Fitted timeouts: seconds allowed on top of reading and writing (connection, queueing, load)."""
FIT_READ_TPS = 15.0
"""Fitted timeouts: prompt tokens per second of a slow server (a 1.5B model on a busy 2-core CPU reads ~60)."""
FIT_WRITE_TPS = 5.0
"""Fitted timeouts: generated tokens per second of a slow server (the same model writes ~24)."""
FIT_MAX_S = 600.0
"""Fitted timeouts: the longest one attempt is given."""
STALLS = 2
"""Timeouts of one request after which it fails without more attempts (the endpoint is stalled)."""


def fitted_timeout(request: ChatRequest | CompletionRequest | TopLogprobsRequest) -> float:
    """Seconds one attempt of ``request`` may take when no timeout is set: ``FIT_BASE_S`` plus its prompt (4
    characters a token) at ``FIT_READ_TPS`` and its output at ``FIT_WRITE_TPS``, at most ``FIT_MAX_S``."""
    if isinstance(request, TopLogprobsRequest):
        prompt, out = len(request.prompt) // 4, 2 * len(request.positions)
    elif isinstance(request, ChatRequest):
        prompt, out = sum(len(m.content) for m in request.messages) // 4, request.max_tokens
    else:
        prompt, out = len(request.prompt) // 4, request.max_tokens
    return min(FIT_MAX_S, FIT_BASE_S + prompt / FIT_READ_TPS + out / FIT_WRITE_TPS)


def estimate_tokens(request: ChatRequest | CompletionRequest | TopLogprobsRequest) -> int:
    """Rough token count of a request (4 characters a token, plus the tokens it may generate)."""
    if isinstance(request, ChatRequest):
        return sum(len(m.content) for m in request.messages) // 4 + request.max_tokens
    if isinstance(request, CompletionRequest):
        return len(request.prompt) // 4 + request.max_tokens
    return sum(request.positions) // 4 + len(request.positions)


class ReliableClient(ClientWrapper):
    """Wraps a backend with timeouts, retries, a concurrency bound and rate limits (see module doc)."""

    def __init__(self, inner: LLMClient, config: ClientConfig, rng: random.Random | None = None) -> None:
        if config.timeout_s is not None and config.timeout_s <= 0:
            raise ValueError("timeout_s must be positive, or None for timeouts fitted to each request")
        super().__init__(inner)
        self.config = config
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(max(1, config.max_concurrency))
        self._rpm = TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
        self._tpm = TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None
        self.attempts = 0
        """Attempts sent so far (each retry counts)."""
        self.retries = 0
        self._deadlines: dict[int, tuple[Any, float, float]] = {}
        """Fitted timeouts in flight: id -> (asyncio.Timeout, fitted seconds, latest deadline)."""

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._run(self.inner.chat, request)

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._run(self.inner.complete, request)

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._run(self.inner.top_logprobs, request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _backoff(self, exc: BaseException | None, failed_attempt: int) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed with ``exc``."""
        cap = self.config.max_backoff_s
        if isinstance(exc, LLMError) and exc.retry_after is not None:
            return min(cap, exc.retry_after + self._rng.uniform(0.0, 0.1 * exc.retry_after + 0.01))
        return self._rng.uniform(0.0, min(cap, self.config.backoff_s * 2 ** (failed_attempt - 1)))

    def _retried(self, exc: BaseException | None, failed_attempt: int, wait: float) -> None:
        self.retries += 1
        logger.debug("%s: attempt %d failed (%s); retrying in %.2fs", self.spec, failed_attempt, exc, wait)

    async def _attempt(
        self, fn: Callable[[R], Awaitable[LLMResponse]], request: R, timeouts: list[float]
    ) -> LLMResponse:
        """One attempt; ``timeouts`` collects the seconds of this request's attempts that timed out."""
        if self._rpm is not None:
            await self._rpm.acquire(1.0)
        if self._tpm is not None:
            await self._tpm.acquire(float(estimate_tokens(request)))
        async with self._sem:
            self.attempts += 1
            start = time.monotonic()
            try:
                if self.config.timeout_s is not None:
                    resp = await _within(fn(request), self.config.timeout_s)
                else:
                    resp = await self._within_fitted(fn(request), fitted_timeout(request))
            except asyncio.TimeoutError as e:
                timeouts.append(time.monotonic() - start)
                if len(timeouts) >= STALLS:
                    raise LLMError(
                        f"{self.spec}: stalled: no answer within {timeouts[-1]:.0f}s, {len(timeouts)} times; the "
                        "endpoint accepts requests but does not answer: check the server (or raise --timeout-s)",
                        retryable=False,
                    ) from e
                raise LLMError(f"{self.spec}: no answer within {timeouts[-1]:.0f}s", retryable=True) from e
            except LLMError:
                raise
            except Exception as e:
                raise map_exception(e, self.spec) from e
            self._answered()
            return resp

    async def _within_fitted(self, aw: Awaitable[LLMResponse], fitted: float) -> LLMResponse:
        """``await aw`` under a deadline of ``fitted`` seconds that :meth:`_answered` pushes back while other
        requests are answered, up to ``max_concurrency`` times ``fitted``."""
        if sys.version_info < (3, 11):  # pragma: no cover - no reschedulable timeouts
            return await asyncio.wait_for(aw, fitted)
        loop = asyncio.get_running_loop()
        now = loop.time()
        latest = now + fitted * max(1, self.config.max_concurrency)
        async with asyncio.timeout_at(now + fitted) as cm:
            key = id(cm)
            self._deadlines[key] = (cm, fitted, latest)
            try:
                return await aw
            finally:
                self._deadlines.pop(key, None)

    def _answered(self) -> None:
        """The endpoint answered: requests waiting behind it get their fitted time again from now."""
        if not self._deadlines:
            return
        now = asyncio.get_running_loop().time()
        for cm, fitted, latest in self._deadlines.values():
            when = cm.when()
            new = min(latest, now + fitted)
            if when is not None and new > when:
                cm.reschedule(new)

    async def _run(self, fn: Callable[[R], Awaitable[LLMResponse]], request: R) -> LLMResponse:
        # The first attempt runs outside tenacity (building its retry state costs ~30 us, a tenth of a
        # request's client CPU); a retryable failure hands attempts 2..n to tenacity.
        n = max(1, self.config.max_attempts)
        timeouts: list[float] = []
        try:
            return await self._attempt(fn, request, timeouts)
        except LLMError as e:
            if not e.retryable or n == 1:
                raise _tried(e, 1) from e
            first = e
        wait = self._backoff(first, 1)
        self._retried(first, 1, wait)
        await asyncio.sleep(wait)
        attempt_no = 1
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(n - 1),
                wait=lambda s: self._backoff(_exception(s), s.attempt_number + 1),
                retry=retry_if_exception(lambda e: isinstance(e, LLMError) and e.retryable),
                before_sleep=lambda s: self._retried(
                    _exception(s), s.attempt_number + 1, s.next_action.sleep if s.next_action else 0.0
                ),
                reraise=True,
            ):
                attempt_no = attempt.retry_state.attempt_number + 1
                with attempt:
                    return await self._attempt(fn, request, timeouts)
        except LLMError as e:
            raise _tried(e, attempt_no) from e
        raise AssertionError("unreachable")  # pragma: no cover


def _exception(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _tried(e: LLMError, attempts: int) -> LLMError:
    """``e`` with the number of attempts made appended to its reason."""
    tried = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    if isinstance(e, Unsupported):
        return Unsupported(f"{e.reason} ({tried})", e.capability, status=e.status)
    return LLMError(f"{e.reason} ({tried})", status=e.status, retryable=e.retryable, retry_after=e.retry_after)


async def _within(aw: Awaitable[LLMResponse], seconds: float) -> LLMResponse:
    """``await aw`` or raise TimeoutError after ``seconds``. ``asyncio.timeout`` (3.11+) runs it in this task;
    ``wait_for`` wraps it in a new task (~15 us more per request)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)  # pragma: no cover
