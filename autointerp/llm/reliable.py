"""Retries, timeouts, bounded concurrency and rate limits, wrapped around any backend.

:class:`ReliableClient` runs every attempt of every request under ``asyncio.wait_for(timeout_s)``, inside
a semaphore of ``max_concurrency`` slots, after taking its share of a requests/min and a tokens/min token
bucket. Retryable failures (429, 5xx, timeouts, connection errors, truncated or garbage bodies) are retried
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
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from autointerp.llm.base import (
    ChatRequest,
    ClientConfig,
    CompletionRequest,
    LLMClient,
    LLMError,
    LLMResponse,
    TopLogprobsRequest,
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


def estimate_tokens(request: ChatRequest | CompletionRequest | TopLogprobsRequest) -> int:
    """Rough token count of a request (4 characters a token, plus the tokens it may generate)."""
    if isinstance(request, ChatRequest):
        return sum(len(m.content) for m in request.messages) // 4 + request.max_tokens
    if isinstance(request, CompletionRequest):
        return len(request.prompt) // 4 + request.max_tokens
    return sum(request.positions) // 4 + len(request.positions)


class ReliableClient:
    """Wraps a backend with timeouts, retries, a concurrency bound and rate limits (see module doc)."""

    def __init__(self, inner: LLMClient, config: ClientConfig, rng: random.Random | None = None) -> None:
        if config.timeout_s <= 0:
            raise ValueError("timeout_s must be positive: every request needs a timeout")
        self.inner = inner
        self.spec = inner.spec
        self.supports_completion = inner.supports_completion
        self.supports_logprobs = inner.supports_logprobs
        self.config = config
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(max(1, config.max_concurrency))
        self._rpm = TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
        self._tpm = TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None
        self.attempts = 0
        """Attempts sent so far (each retry counts)."""
        self.retries = 0

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

    async def _attempt(self, fn: Callable[[R], Awaitable[LLMResponse]], request: R) -> LLMResponse:
        if self._rpm is not None:
            await self._rpm.acquire(1.0)
        if self._tpm is not None:
            await self._tpm.acquire(float(estimate_tokens(request)))
        async with self._sem:
            self.attempts += 1
            try:
                return await _within(fn(request), self.config.timeout_s)
            except asyncio.TimeoutError as e:
                raise LLMError(f"{self.spec}: no answer within {self.config.timeout_s:g}s", retryable=True) from e
            except LLMError:
                raise
            except Exception as e:
                raise map_exception(e, self.spec) from e

    async def _run(self, fn: Callable[[R], Awaitable[LLMResponse]], request: R) -> LLMResponse:
        # The first attempt runs outside tenacity (building its retry state costs ~30 us, a tenth of a
        # request's client CPU); a retryable failure hands attempts 2..n to tenacity.
        n = max(1, self.config.max_attempts)
        try:
            return await self._attempt(fn, request)
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
                    return await self._attempt(fn, request)
        except LLMError as e:
            raise _tried(e, attempt_no) from e
        raise AssertionError("unreachable")  # pragma: no cover


def _exception(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _tried(e: LLMError, attempts: int) -> LLMError:
    """``e`` with the number of attempts made appended to its reason."""
    tried = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    return LLMError(f"{e.reason} ({tried})", status=e.status, retryable=e.retryable, retry_after=e.retry_after)


async def _within(aw: Awaitable[LLMResponse], seconds: float) -> LLMResponse:
    """``await aw`` or raise TimeoutError after ``seconds``. ``asyncio.timeout`` (3.11+) runs it in this task;
    ``wait_for`` wraps it in a new task (~15 us more per request)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)  # pragma: no cover
