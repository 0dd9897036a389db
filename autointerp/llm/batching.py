"""One micro-batcher for in-process engines: concurrent calls are collected into one batched engine call.

:class:`MicroBatcher` keeps a queue of submitted items. A worker task takes up to ``max_batch`` of them (after
waiting ``wait_s`` for more to arrive, ``0`` = only those already queued), runs ``run_batch(items)`` in a
worker thread (the engine's forward pass or ``generate`` call; one batch at a time, so the engine needs no
lock of its own), and resolves each caller with its own result. ``run_batch`` returns one result per item,
in order; a result that is an exception fails that caller only, and an exception raised by ``run_batch``
fails every caller of the batch. A caller that went away (cancelled, timed out) is skipped when its batch
forms. Used by the transformers backend (forward passes of ``top_logprobs``) and the vLLM offline backend
(``generate`` / ``chat``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Q = TypeVar("Q")
A = TypeVar("A")


class MicroBatcher(Generic[Q, A]):
    """Collects concurrent ``submit(item)`` calls into batches for ``run_batch`` (see the module doc)."""

    def __init__(
        self,
        run_batch: Callable[[list[Q]], Sequence[A | BaseException]],
        *,
        max_batch: int,
        wait_s: float = 0.0,
        describe: str = "batch",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run_batch = run_batch
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

    async def _drain(self) -> None:
        while self._queue:
            if self.wait_s > 0 and len(self._queue) < self.max_batch:
                await asyncio.sleep(self.wait_s)  # let concurrent callers join the batch
            else:
                await asyncio.sleep(0)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            live = [(q, f) for q, f in batch if not f.done()]
            if not live:
                continue
            self.batches += 1
            self.batch_sizes.append(len(live))
            try:
                results: Sequence[A | BaseException] = await asyncio.to_thread(self.run_batch, [q for q, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{self.describe}: {len(results)} results for {len(live)} items")
            except Exception as e:  # the whole batch failed: every caller in it gets the reason
                results = [e] * len(live)
            for (_, f), res in zip(live, results, strict=True):
                if f.done():
                    continue
                if isinstance(res, BaseException):
                    f.set_exception(res)
                else:
                    f.set_result(res)
