"""Coalescing ingest: concurrent writers share one embed call and one store commit per batch.

Under load, every chat exchange arrives as its own one- or two-item ingest. Embedding and committing them
one by one pays the model's and Chroma's per-call overhead each time; here they queue, the next batch takes
everything waiting (up to `max_batch` items), and while one batch is being committed the next one is being
embedded. A lone request is never held back to wait for company: batching comes only from what queued up
while the previous batch was busy. Each caller is answered once its items are committed (durable), with
the ids that were newly stored for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from memory.embedding import Vectors
from memory.items import MemoryItem

log = logging.getLogger("rapport.memory.writer")
T = TypeVar("T")

Embed = Callable[[list[str]], Awaitable[Vectors]]
Commit = Callable[[list[MemoryItem], Vectors], Awaitable[list[str]]]


@dataclass(slots=True)
class _Request:
    items: list[MemoryItem]
    done: asyncio.Future[list[str]]


@dataclass(slots=True)
class _Batch:
    requests: list[_Request]
    items: list[MemoryItem] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.items = [item for request in self.requests for item in request.items]

    def fail(self, exc: BaseException) -> None:
        for request in self.requests:
            if not request.done.done():
                request.done.set_exception(exc)

    def resolve(self, stored: list[str]) -> None:
        fresh = set(stored)
        for request in self.requests:
            # The same new item in two requests of one batch counts as new for the first one only.
            mine = list(dict.fromkeys(item.id for item in request.items if item.id in fresh))
            fresh.difference_update(mine)
            if not request.done.done():
                request.done.set_result(mine)


async def _guarded(batch: _Batch, step: str, work: Awaitable[T]) -> T | None:
    """Run one stage's work for a batch; a failure fails that batch's callers only (None), not the writer."""
    try:
        return await work
    except asyncio.CancelledError:
        batch.fail(RuntimeError("memory writer stopped"))
        raise
    except Exception as exc:
        log.exception("%s a batch of %d items failed", step, len(batch.items))
        batch.fail(exc)
        return None


class IngestWriter:
    def __init__(self, embed: Embed, commit: Commit, *, max_batch: int = 256) -> None:
        self._embed = embed
        self._commit = commit
        self.max_batch = max_batch
        self._pending: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._embedded: asyncio.Queue[tuple[_Batch, Vectors]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.items = 0

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._tasks and not any(t.done() for t in self._tasks):
            return
        # First use, or a new event loop (tests and benches may run several): start the two stages here.
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._embedded = asyncio.Queue(maxsize=1)
        self._tasks = [
            loop.create_task(self._embed_stage(), name="rapport-ingest-embed"),
            loop.create_task(self._commit_stage(), name="rapport-ingest-commit"),
        ]

    async def submit(self, items: list[MemoryItem]) -> list[str]:
        """Embed and commit `items`; returns the ids newly stored for this call once they are durable."""
        if not items:
            return []
        self._start()
        assert self._wakeup is not None and self._loop is not None
        request = _Request(items, self._loop.create_future())
        self._pending.append(request)
        self._wakeup.set()
        # Shielded: a caller that goes away does not cancel a write other callers share.
        return await asyncio.shield(request.done)

    def _take(self) -> _Batch:
        taken: list[_Request] = []
        size = 0
        while self._pending and (not taken or size + len(self._pending[0].items) <= self.max_batch):
            request = self._pending.pop(0)
            taken.append(request)
            size += len(request.items)
        return _Batch(taken)

    async def _embed_stage(self) -> None:
        assert self._wakeup is not None and self._embedded is not None
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            vectors = await _guarded(batch, "embedding", self._embed([item.text for item in batch.items]))
            if vectors is not None:
                await self._embedded.put((batch, vectors))

    async def _commit_stage(self) -> None:
        assert self._embedded is not None
        while True:
            batch, vectors = await self._embedded.get()
            stored = await _guarded(batch, "committing", self._commit(batch.items, vectors))
            if stored is None:
                continue
            self.batches += 1
            self.items += len(batch.items)
            batch.resolve(stored)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
        for request in self._pending:
            if not request.done.done():
                request.done.set_exception(RuntimeError("memory writer stopped"))
        self._pending.clear()
        self._tasks = []
