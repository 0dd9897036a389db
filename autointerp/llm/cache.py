"""Persistent, content-addressed LLM response cache (SQLite, WAL) and in-flight request coalescing.

Key: sha256 of the canonical JSON of (client spec, request type, every field of the frozen request
dataclass). The spec names the backend kind and model (``openai:gpt-4o-mini``, ``local:smollm2-135m``,
``openai-compatible:http://host/v1/model``); API keys are never part of it and never stored. Value: the
response (text, logprobs, usage, model). Only successful answers are stored. Answers that arrive in the same
turn of the event loop are committed together in one transaction (group commit), and no caller gets an
answer before it is committed: a killed run loses nothing it was answered, and a rerun of the same
requests sends none.

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
    ClientWrapper,
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


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""The key's JSON form: sorted keys, no spaces, UTF-8 text as is, no NaN."""
_ATOMS = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


_KEY_OPTIONAL: dict[type, dict[str, Any]] = {ChatRequest: {"top_logprobs": 0}}
"""Request fields added after caches were written, left out of the key while at these values, so that the
answers cached before a field existed keep their keys."""


def _field_names(cls: type) -> tuple[str, ...] | None:
    """The field names of a dataclass type (None for other types), looked up once per type."""
    if cls not in _FIELD_NAMES:
        _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
    return _FIELD_NAMES[cls]


def _plain(value: Any) -> Any:
    """What ``dataclasses.asdict`` makes of a request, for JSON: dataclasses -> dicts, tuples -> lists (the
    same JSON text, so keys are unchanged), at a fraction of its cost (no deep copies)."""
    cls = type(value)
    if cls in _ATOMS:
        return value
    names = _field_names(cls)
    if names is not None:
        optional = _KEY_OPTIONAL.get(cls, {})
        return {
            n: _plain(getattr(value, n))
            for n in names
            if n not in optional or getattr(value, n) != optional[n]
        }
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def request_key(spec: str, request: Request) -> str:
    """sha256 hex of the canonical JSON of (spec, request type, request fields)."""
    payload = {"spec": spec, "type": type(request).__name__, "request": _plain(request)}
    return hashlib.sha256(_CANONICAL.encode(payload).encode()).hexdigest()


def response_to_json(r: LLMResponse) -> str:
    return json.dumps(
        {
            "text": r.text,
            "logprobs": [lp.top for lp in r.logprobs],
            **({"tokens": [lp.token for lp in r.logprobs]} if any(lp.token for lp in r.logprobs) else {}),
            "usage": r.usage.to_json(),
            "model": r.model,
        },
        ensure_ascii=False,
    )


def response_from_json(s: str) -> LLMResponse:
    d = json.loads(s)
    return LLMResponse(
        text=d["text"],
        logprobs=[
            TokenLogprobs(top={str(k): float(v) for k, v in t.items()}, token=str(tok))
            for t, tok in zip(d["logprobs"], d.get("tokens") or [""] * len(d["logprobs"]), strict=True)
        ],
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

    def put_many(self, entries: list[tuple[str, str, str, LLMResponse]]) -> None:
        """Store answers ``(key, spec, kind, response)`` and commit them in one transaction before returning
        (one commit costs as much as a few inserts, so batching answers that arrive together saves CPU)."""
        now = time.time()
        rows = [(key, spec, kind, response_to_json(r), now) for key, spec, kind, r in entries]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO responses (key, spec, kind, value, created) VALUES (?, ?, ?, ?, ?)", rows
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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
        logprobs=[TokenLogprobs(top=dict(t.top), token=t.token) for t in r.logprobs],
        usage=Usage(cache_hits=1),
        cached=True,
        model=r.model,
    )


class CachedClient(ClientWrapper):
    """Answers from the cache when it can; coalesces identical in-flight requests into one; stores answers."""

    def __init__(self, inner: LLMClient, cache: ResponseCache) -> None:
        super().__init__(inner)
        self.cache = cache
        self._inflight: dict[str, asyncio.Future[LLMResponse]] = {}
        self._unstored: list[tuple[tuple[str, str, str, LLMResponse], asyncio.Future[None]]] = []
        """Answers waiting for the next group commit, each with the future its fetch awaits."""
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
        await self._store((key, self.spec, kind, response))
        return response

    def _store(self, entry: tuple[str, str, str, LLMResponse]) -> asyncio.Future[None]:
        """Queue an answer for the group commit that runs once this turn of the event loop is done; the
        returned future is done when it is committed (or failed to store, which is logged)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._unstored:
            loop.call_soon(self._commit)
        self._unstored.append((entry, done))
        return done

    def _commit(self) -> None:
        batch, self._unstored = self._unstored, []
        try:
            self.cache.put_many([entry for entry, _ in batch])
        except (sqlite3.Error, ValueError, TypeError) as e:  # the answers are still good; a rerun asks again
            logger.warning("could not store %d answers in the LLM cache %s: %s", len(batch), self.cache.path, e)
        finally:  # whatever happened, no caller waits forever for its answer
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

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
