"""Bounded residency of the embedded Chroma store: after more users than the bound, at most the bound of
collections stays open, the process's memory stops growing with users, and a user whose collection was
closed reads back exactly what it read before, items written since the index's last persist included.

Why the store reopens its client rather than letting chromadb evict: with chromadb's cache capped at 4
(`open_embedded_client(path, 4)`), the same sequence as the first test here failed about one run in two
in-process, either "Nothing found on disk" for a never-persisted index or a user's last items missing from
its queries; a new client replays them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from memory.chroma_client import hnsw_cache_capacity
from memory.config import MemorySettings
from memory.embedding import SentenceTransformerEmbedder
from memory.items import MemoryItem
from memory.options import MemoryOptions
from memory.store import ChromaStore
from memory.stores.choose import open_store
from tests.memory.conftest import MakeService

DIM = 384
FACTS = [
    "I am vegetarian and never eat meat.",
    "My favourite programming language is Rust.",
    "I live in Lisbon with my two cats.",
    "I am training for a marathon in April.",
    "I play the cello in an amateur orchestra.",
]


def unit_rows(n: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def touch(store: ChromaStore, user: str, seed: int) -> None:
    """What serving a user does to the store: write an exchange, then retrieve from it."""
    batch = [MemoryItem("t", user, f"{user} said thing {i}", ts=1000.0 + i) for i in range(2)]
    vectors = unit_rows(2, seed)
    store.add(batch, vectors)
    assert [h.item.id for h in store.query("t", user, vectors[0], 1)] == [batch[0].id]


def snapshot(store: ChromaStore, user: str, query: np.ndarray[Any, np.dtype[np.float32]]) -> tuple[Any, ...]:
    hits = store.query("t", user, query, 10)
    return (
        [h.item.id for h in hits],
        [round(h.similarity, 5) for h in hits],
        [(it.id, it.text, it.ts) for it in store.get("t", user)],
        store.count("t", user),
    )


def test_more_users_than_the_bound_keep_the_bound_open_and_an_evicted_user_reads_the_same(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    store = ChromaStore(path=tmp_path / "chroma", prefix="res", max_open_collections=4)
    try:
        assert hnsw_cache_capacity(store.client) == 8  # twice the bound: chromadb itself never evicts
        # Five items, one write each as exchanges come: far below the index's sync threshold (100), so they
        # live in Chroma's log and the loaded index only.
        alice = [MemoryItem("t", "alice", text, ts=2000.0 + i) for i, text in enumerate(FACTS)]
        alice_vectors = embedder.encode_sync(FACTS)
        for i, item in enumerate(alice):
            store.add([item], alice_vectors[i : i + 1])
        query = embedder.encode_sync(["What should I cook for dinner tonight?"])[0]
        before = snapshot(store, "alice", query)
        assert before[0][0] == alice[0].id and before[3] == 5

        for n in range(24):
            touch(store, f"user-{n}", seed=n)
            assert store.open_collections() <= 4

        assert store.reopens >= 5
        assert snapshot(store, "alice", query) == before
        for i, item in enumerate(alice):  # each item, the last one included, is its own nearest
            assert store.query("t", "alice", alice_vectors[i], 1)[0].item.id == item.id
        # And a write to the reloaded index lands beside what was there.
        late = MemoryItem("t", "alice", "I started learning Portuguese.", ts=3000.0)
        store.add([late], embedder.encode_sync([late.text]))
        assert store.count("t", "alice") == 6
        for n in range(24, 30):
            touch(store, f"user-{n}", seed=n)
        assert {it.id for it in store.get("t", "alice")} == {it.id for it in alice} | {late.id}
        assert all(store.count("t", f"user-{n}") == 2 for n in range(30))
    finally:
        store.close()


def test_resident_memory_stops_growing_with_users_served(tmp_path: Path) -> None:
    # Unbounded, each user's loaded index held about 2.7 MB: 160 users would add about 430 MB.
    store = ChromaStore(path=tmp_path / "chroma", prefix="rss", max_open_collections=8)
    process = psutil.Process()
    try:
        for n in range(16):  # fill the bound first: its 8 indexes are the resident set that may stay
            touch(store, f"warm-{n}", seed=n)
        filled = process.memory_info().rss
        for n in range(160):
            touch(store, f"user-{n}", seed=1000 + n)
        grown_mb = (process.memory_info().rss - filled) / 2**20
        assert grown_mb < 120, f"RSS grew by {grown_mb:.0f} MB over 160 users with 8 resident"
    finally:
        store.close()


def test_a_second_store_on_the_same_path_shares_the_running_client(tmp_path: Path) -> None:
    first = ChromaStore(path=tmp_path / "chroma", prefix="same", max_open_collections=3)
    second = ChromaStore(path=tmp_path / "chroma", prefix="same", max_open_collections=3)
    try:
        touch(first, "alice", seed=1)
        assert second.count("t", "alice") == 2
        assert hnsw_cache_capacity(second.client) == 6
    finally:
        second.close()
        first.close()


def test_the_setting_reaches_the_embedded_store(tmp_path: Path) -> None:
    assert MemorySettings().max_open_collections == 256
    store = open_store(
        MemorySettings(max_open_collections=3, staged_writes=False), tmp_path, shared_db=None, dim=None, migrate=False
    )
    try:
        assert isinstance(store, ChromaStore)
        assert hnsw_cache_capacity(store.client) == 6
    finally:
        store.close()
    with pytest.raises(ValueError):
        MemorySettings(max_open_collections=0)


async def test_a_service_over_the_bound_retrieves_an_evicted_users_memories(make_service: MakeService) -> None:
    service = make_service(summaries=False, max_open_collections=2)
    await service.ingest([MemoryItem("t", "alice", text) for text in FACTS])
    first = await service.retrieve("t", "alice", "Suggest a dinner recipe for me", MemoryOptions(k=2))
    for n in range(6):
        await service.ingest([MemoryItem("t", f"user-{n}", f"I am user {n} and I like tea.")])
        await service.retrieve("t", f"user-{n}", "What do I like?", MemoryOptions(k=1))
    again = await service.retrieve("t", "alice", "Suggest a dinner recipe for me", MemoryOptions(k=2))
    assert [it.text for it in again.items] == [it.text for it in first.items]
    assert again.items[0].text == FACTS[0]
    assert again.block == first.block


def test_the_summary_cache_of_the_catalog_is_bounded(tmp_path: Path) -> None:
    from memory.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog.sqlite3", summary_cache_entries=3)
    try:
        for n in range(10):
            catalog.touch("t", f"user-{n}", 1)
            catalog.add_summary("t", f"user-{n}", "general", f"user {n} keeps bees", 1, None)
            assert catalog.latest_summary("t", f"user-{n}", "general") is not None
            assert catalog.cached_summaries() <= 3
        assert catalog.cached_summaries() == 3
        # An entry that fell out is read from the database again, the same as before.
        first = catalog.latest_summary("t", "user-0", "general")
        assert first is not None and first.text == "user 0 keeps bees"
        assert catalog.latest_summary("t", "nobody", "general") is None
        assert catalog.cached_summaries() == 3
    finally:
        catalog.close()
