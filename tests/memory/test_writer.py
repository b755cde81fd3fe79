"""The coalescing ingest writer: shared batches, per-caller answers, failures confined to their batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from memory.embedding import Vectors
from memory.items import MemoryItem
from memory.writer import IngestWriter
from tests.memory.conftest import MakeService


async def test_concurrent_ingests_share_batches_and_each_gets_its_own_ids(make_service: MakeService) -> None:
    service = make_service(summaries=False)
    calls = [
        [MemoryItem("t1", f"user-{i % 5}", f"note {i}: I like color number {i}", "user", 1000.0 + i)]
        for i in range(40)
    ]
    # Two callers store the same text for the same user at once: it is new for exactly one of them.
    calls.append([MemoryItem("t1", "user-0", "note 0: I like color number 0", "user", 1000.0)])
    results = await asyncio.gather(*(service.ingest(items) for items in calls))
    assert service.writer.batches < len(calls) // 4
    assert sum(len(ids) for ids in results) == 40
    assert results[0] and not results[-1]
    for items, ids in zip(calls[:40], results[:40], strict=True):
        assert ids == [items[0].id]
    for u in range(5):
        stored = await service.items("t1", f"user-{u}")
        assert sorted(it.text for it in stored) == sorted(
            f"note {i}: I like color number {i}" for i in range(u, 40, 5)
        )
        record = await service.user("t1", f"user-{u}")
        assert record is not None and record.items == 8
    # Nothing leaked between users of the shared batches.
    assert await service.items("t2", "user-0") == []


async def test_a_failed_embed_fails_only_its_batch_and_the_writer_recovers() -> None:
    committed: list[str] = []
    fail_next = True

    async def embed(texts: list[str]) -> Vectors:
        nonlocal fail_next
        if fail_next:
            fail_next = False
            raise RuntimeError("embedding backend exploded")
        return np.ones((len(texts), 4), dtype=np.float32)

    async def commit(items: list[MemoryItem], vectors: Vectors) -> list[str]:
        committed.extend(item.id for item in items)
        return [item.id for item in items]

    writer = IngestWriter(embed, commit, max_batch=8)
    first = [MemoryItem("t", "u", "doomed")]
    with pytest.raises(RuntimeError, match="exploded"):
        await writer.submit(first)
    later = [MemoryItem("t", "u", f"fine {i}") for i in range(20)]
    answers = await asyncio.gather(*(writer.submit([item]) for item in later))
    assert answers == [[item.id] for item in later]
    assert committed == [item.id for item in later]
    assert writer.batches == 3  # 20 queued single-item calls, at most 8 items per batch
    await writer.aclose()
    # A closed writer starts its stages again on the next submit.
    again = [MemoryItem("t", "u", "after close")]
    assert await writer.submit(again) == [again[0].id]
    await writer.aclose()
