"""One micro-batcher for in-process engines: concurrent calls are collected into one batched engine call.

:class:`MicroBatcher` keeps a queue of submitted items. A worker task takes up to ``max_batch`` of them (after
waiting ``wait_s`` for more to arrive, ``0`` = only those already queued), runs ``run_batch(items)`` in a
worker thread (the engine's forward pass or ``generate`` call; one batch at a time, so the engine needs no
lock of its own), and resolves each caller with its own result. ``run_batch`` returns one result per item,
in order; a result that is an exception fails that caller only, and an exception raised by ``run_batch``
fails every caller of the batch. A caller that went away (cancelled, timed out) is skipped when its batch
forms. Used by the transformers backend (forward passes of ``top_logprobs``) and the vLLM offline backend
(``generate`` / ``chat``).

``run_batch_async`` instead of ``run_batch``: the batch is an awaitable (an LLM request holding several
callers' parts, e.g. several latents' judge prompts, :class:`autointerp.score.JudgeGrouper`); batches
then run concurrently, each as its own task. ``key``: items with the same key never share a batch (the
later one waits for the next).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

Q = TypeVar("Q")
A = TypeVar("A")


class MicroBatcher(Generic[Q, A]):
    """Collects concurrent ``submit(item)`` calls into batches for ``run_batch`` (see the module doc)."""

    def __init__(
        self,
        run_batch: Callable[[list[Q]], Sequence[A | BaseException]] | None = None,
        *,
        run_batch_async: Callable[[list[Q]], Awaitable[Sequence[A | BaseException]]] | None = None,
        max_batch: int,
        wait_s: float = 0.0,
        key: Callable[[Q], Hashable] | None = None,
        describe: str = "batch",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if (run_batch is None) == (run_batch_async is None):
            raise ValueError("give exactly one of run_batch and run_batch_async")
        self.run_batch = run_batch
        self.run_batch_async = run_batch_async
        self.key = key
        self._running: set[asyncio.Task[None]] = set()
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.describe = describe
        self._queue: list[tuple[Q, asyncio.Future[A]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        """Batches run so far."""
        self.batch_sizes: list[int] = []
        """Size of every batch run (for tests and benchmarks)."""

    async def submit(self, item: Q) -> A:
        fut: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())
        return await fut

    def _take(self) -> list[tuple[Q, asyncio.Future[A]]]:
        """Up to ``max_batch`` queued items (distinct keys, when a key is given), in queue order."""
        if self.key is None:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            return batch
        batch, rest, keys = [], [], set()
        for item in self._queue:
            k = self.key(item[0])
            if len(batch) < self.max_batch and k not in keys:
                batch.append(item)
                keys.add(k)
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        while self._queue:
            if self.wait_s > 0 and len(self._queue) < self.max_batch:
                await asyncio.sleep(self.wait_s)  # let concurrent callers join the batch
            else:
                await asyncio.sleep(0)
            live = [(q, f) for q, f in self._take() if not f.done()]
            if not live:
                continue
            self.batches += 1
            self.batch_sizes.append(len(live))
            if self.run_batch_async is not None:
                task = asyncio.ensure_future(self._run_async(live, self.run_batch_async))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                continue
            assert self.run_batch is not None
            try:
                results: Sequence[A | BaseException] = await asyncio.to_thread(self.run_batch, [q for q, _ in live])
            except Exception as e:  # the whole batch failed: every caller in it gets the reason
                results = [e] * len(live)
            self._resolve(live, results)

    async def _run_async(
        self,
        live: list[tuple[Q, asyncio.Future[A]]],
        run: Callable[[list[Q]], Awaitable[Sequence[A | BaseException]]],
    ) -> None:
        try:
            results = await run([q for q, _ in live])
        except Exception as e:  # the whole batch failed: every caller in it gets the reason
            results = [e] * len(live)
        self._resolve(live, results)

    def _resolve(self, live: list[tuple[Q, asyncio.Future[A]]], results: Sequence[A | BaseException]) -> None:
        if len(results) != len(live):
            err = RuntimeError(f"{self.describe}: {len(results)} results for {len(live)} items")
            results = [err] * len(live)
        for (_, f), res in zip(live, results, strict=True):
            if f.done():
                continue
            if isinstance(res, BaseException):
                f.set_exception(res)
            else:
                f.set_result(res)
