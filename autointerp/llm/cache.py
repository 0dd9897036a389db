"""Persistent, content-addressed LLM response cache (SQLite, WAL) and in-flight request coalescing.

Key: sha256 of the canonical JSON of (client spec, request type, every field of the frozen request
dataclass). The spec names the backend kind and model (``openai:gpt-4o-mini``, ``local:smollm2-135m``,
``openai-compatible:http://host/v1/model``); API keys are never part of it and never stored. Value: the
response (text, logprobs, usage, model). Only successful answers are stored, each committed as soon as it
arrives, so a killed run loses nothing it was answered, and a rerun of the same requests sends none.

Requests with ``temperature > 0`` are cached too (a rerun reproduces the run): to draw N different
samples, give the N requests different ``seed`` values, which are part of the key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autointerp.llm.base import (
    ChatRequest,
    CompletionRequest,
    LLMClient,
    LLMResponse,
    TokenLogprobs,
    TopLogprobsRequest,
)
from autointerp.records import Usage

logger = logging.getLogger(__name__)

Request = ChatRequest | CompletionRequest | TopLogprobsRequest


def default_cache_path() -> Path:
    from autointerp.paths import cache_dir

    return cache_dir() / "llm-cache.sqlite"


def request_key(spec: str, request: Request) -> str:
    """sha256 hex of the canonical JSON of (spec, request type, request fields)."""
    payload = {"spec": spec, "type": type(request).__name__, "request": dataclasses.asdict(request)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def response_to_json(r: LLMResponse) -> str:
    return json.dumps(
        {
            "text": r.text,
            "logprobs": [lp.top for lp in r.logprobs],
            "usage": r.usage.to_json(),
            "model": r.model,
        },
        ensure_ascii=False,
    )


def response_from_json(s: str) -> LLMResponse:
    d = json.loads(s)
    return LLMResponse(
        text=d["text"],
        logprobs=[TokenLogprobs(top={str(k): float(v) for k, v in t.items()}) for t in d["logprobs"]],
        usage=Usage.from_json(d["usage"]),
        model=d.get("model", ""),
    )


@dataclass
class CacheStats:
    path: str
    entries: int
    bytes: int
    by_spec: dict[str, int]


class ResponseCache:
    """The SQLite store. Safe to share between clients, threads and processes (WAL, busy timeout)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, spec TEXT NOT NULL, kind TEXT NOT NULL,"
            " value TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> LLMResponse | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return response_from_json(row[0]) if row else None

    def put(self, key: str, spec: str, kind: str, response: LLMResponse) -> None:
        """Store one answer and commit it now (autocommit), so a crash cannot lose it."""
        value = response_to_json(response)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, spec, kind, value, created) VALUES (?, ?, ?, ?, ?)",
                (key, spec, kind, value, time.time()),
            )

    def stats(self) -> CacheStats:
        with self._lock:
            rows = self._db.execute("SELECT spec, COUNT(*), SUM(LENGTH(value)) FROM responses GROUP BY spec").fetchall()
        return CacheStats(
            path=str(self.path),
            entries=sum(int(r[1]) for r in rows),
            bytes=sum(int(r[2] or 0) for r in rows),
            by_spec={str(r[0]): int(r[1]) for r in rows},
        )

    def clear(self, spec: str | None = None) -> int:
        """Delete all entries (or those of one spec); returns how many were deleted."""
        with self._lock:
            if spec is None:
                cur = self._db.execute("DELETE FROM responses")
            else:
                cur = self._db.execute("DELETE FROM responses WHERE spec = ?", (spec,))
            n = cur.rowcount
            self._db.execute("VACUUM")
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _cached_copy(r: LLMResponse) -> LLMResponse:
    """The answer as seen by a caller who caused no request: usage counts one cache hit, no tokens, no cost."""
    return LLMResponse(
        text=r.text,
        logprobs=[TokenLogprobs(top=dict(t.top)) for t in r.logprobs],
        usage=Usage(cache_hits=1),
        cached=True,
        model=r.model,
    )


class CachedClient:
    """Answers from the cache when it can; coalesces identical in-flight requests into one; stores answers."""

    def __init__(self, inner: LLMClient, cache: ResponseCache) -> None:
        self.inner = inner
        self.cache = cache
        self.spec = inner.spec
        self.supports_completion = inner.supports_completion
        self.supports_logprobs = inner.supports_logprobs
        self._inflight: dict[str, asyncio.Future[LLMResponse]] = {}
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    async def chat(self, request: ChatRequest) -> LLMResponse:
        return await self._call("chat", request, self.inner.chat)

    async def complete(self, request: CompletionRequest) -> LLMResponse:
        return await self._call("complete", request, self.inner.complete)

    async def top_logprobs(self, request: TopLogprobsRequest) -> LLMResponse:
        return await self._call("top_logprobs", request, self.inner.top_logprobs)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def stats(self) -> dict[str, Any]:
        s = self.cache.stats()
        return {
            "path": s.path,
            "entries": s.entries,
            "bytes": s.bytes,
            "hits": self.hits,
            "misses": self.misses,
            "coalesced": self.coalesced,
        }

    async def _fetch(
        self, key: str, kind: str, fn: Callable[[Any], Awaitable[LLMResponse]], request: Request
    ) -> LLMResponse:
        response = await fn(request)
        try:
            self.cache.put(key, self.spec, kind, response)
        except sqlite3.Error as e:  # the answer is still good; the next run will ask again
            logger.warning("could not store an answer in the LLM cache %s: %s", self.cache.path, e)
        return response

    async def _call(self, kind: str, request: Any, fn: Callable[[Any], Awaitable[LLMResponse]]) -> LLMResponse:
        key = request_key(self.spec, request)
        hit = self.cache.get(key)
        if hit is not None:
            self.hits += 1
            return _cached_copy(hit)
        task = self._inflight.get(key)
        if task is not None:
            self.coalesced += 1
            return _cached_copy(await asyncio.shield(task))
        self.misses += 1
        new = asyncio.ensure_future(self._fetch(key, kind, fn, request))
        self._inflight[key] = new

        def done(t: asyncio.Future[LLMResponse]) -> None:
            if self._inflight.get(key) is t:
                del self._inflight[key]
            if not t.cancelled():
                t.exception()  # mark retrieved: waiters re-raise it themselves

        new.add_done_callback(done)
        return await asyncio.shield(new)
