"""Write-behind staging over real embedded Chroma: visibility before the flush, group commit, crash replay,
forgetting staged items, back-pressure while the store is down, and edits racing the flusher."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory.items import MemoryItem
from memory.pg_store import PgVectorStore
from memory.staging import StagedStore, StagingFull
from memory.store import ChromaStore
from rapport.core.database import Database

REPO = Path(__file__).resolve().parents[2]
DIM = 384
IDLE = 600.0  # a linger no test waits out: only flush() and close() make the flusher run


def vectors(n: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def items(user: str, texts: list[str], tenant: str = "t") -> list[MemoryItem]:
    return [MemoryItem(tenant, user, text, ts=1000.0 + i) for i, text in enumerate(texts)]


class CountingStore:
    """The real Chroma store, with its writes counted and an outage switch (a real store can't be told to
    fail on cue)."""

    def __init__(self, inner: ChromaStore) -> None:
        self.inner = inner
        self.upserts: list[tuple[str, int]] = []
        self.down = False

    def upsert(self, batch: list[MemoryItem], vecs: Any) -> None:
        if self.down:
            raise ConnectionError("vector store unreachable")
        self.upserts.append((batch[0].user, len(batch)))
        self.inner.upsert(batch, vecs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=["chroma", "postgres"])
def chroma(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChromaStore]:
    """The store under the staging: embedded Chroma, and PostgreSQL + pgvector (same contract)."""
    if request.param == "chroma":
        yield ChromaStore(path=tmp_path / "chroma", prefix="stg")
        return
    db = Database.postgres(request.getfixturevalue("postgres_url"))
    yield PgVectorStore(db, DIM)  # type: ignore[misc]
    db.close()


@pytest.fixture()
def staged(tmp_path: Path, chroma: ChromaStore) -> Iterator[tuple[StagedStore, CountingStore]]:
    counting = CountingStore(chroma)
    store = StagedStore(counting, tmp_path / "journal.sqlite3", linger_s=IDLE)  # type: ignore[arg-type]
    yield store, counting
    counting.down = False
    store.close()


def test_acknowledged_items_are_found_before_they_reach_chroma(
    staged: tuple[StagedStore, CountingStore], chroma: ChromaStore
) -> None:
    store, counting = staged
    batch = items("alice", ["likes tea", "hates coffee", "lives in Oslo"])
    vecs = vectors(3, seed=1)
    assert store.add(batch, vecs) == [it.id for it in batch]
    assert chroma.count("t", "alice") == 0 and counting.upserts == []
    hits = store.query("t", "alice", vecs[1], 2)
    assert hits[0].item.text == "hates coffee" and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 2
    assert store.query("t", "bob", vecs[1], 2) == []  # staged items stay with their user
    assert store.add(batch[:2], vecs[:2]) == []  # duplicates of staged items are not staged twice
    assert store.flush(timeout_s=60)
    assert chroma.count("t", "alice") == 3
    assert store.add(batch, vecs) == []  # ... nor of stored ones
    hits = store.query("t", "alice", vecs[2], 5)
    assert hits[0].item.text == "lives in Oslo"
    assert len(hits) == 3  # flushed items are not also merged in twice


def test_one_store_call_per_user_however_many_batches(staged: tuple[StagedStore, CountingStore]) -> None:
    store, counting = staged
    for round_ in range(3):
        for user in ("u1", "u2"):
            store.add(items(user, [f"{user} fact {round_}"]), vectors(1, seed=round_))
    assert store.staged_count() == 6
    assert store.flush(timeout_s=60)
    assert sorted(counting.upserts) == [("u1", 3), ("u2", 3)]


def test_reads_other_than_query_settle_the_user_first(staged: tuple[StagedStore, CountingStore]) -> None:
    store, counting = staged
    store.add(items("u", ["one", "two"]), vectors(2, seed=3))
    store.add(items("v", ["three"]), vectors(1, seed=4))
    assert [it.text for it in store.get("t", "u")] == ["one", "two"]
    assert store.count("t", "u") == 2
    assert counting.upserts == [("u", 2)]  # only the user that was read was flushed
    assert store.staged_count() == 1


def test_a_killed_process_loses_nothing_acknowledged(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from pathlib import Path
        from memory.items import MemoryItem
        from memory.staging import StagedStore
        from memory.store import ChromaStore
        root = Path({str(tmp_path)!r})
        store = StagedStore(ChromaStore(path=root / "chroma", prefix="stg"), root / "journal.sqlite3", linger_s=600)
        rows = np.eye(3, {DIM}, dtype=np.float32)
        ids = store.add([MemoryItem("t", "crash", f"fact {{i}}", ts=float(i)) for i in range(3)], rows)
        print(len(ids), flush=True)
        os._exit(0)  # no close, no flush: as if killed right after acknowledging
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "3"
    chroma = ChromaStore(path=tmp_path / "chroma", prefix="stg")
    assert chroma.count("t", "crash") == 0  # it really died before writing Chroma
    store = StagedStore(chroma, tmp_path / "journal.sqlite3", linger_s=IDLE)
    try:
        assert store.staged_count() == 3
        assert len(store.query("t", "crash", np.eye(1, DIM, 1, dtype=np.float32)[0], 1)) == 1
        assert store.flush(timeout_s=60)
        assert sorted(it.text for it in chroma.get("t", "crash")) == ["fact 0", "fact 1", "fact 2"]
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM journal").fetchone() == (0,)


def test_forgetting_a_user_drops_staged_items_everywhere(
    tmp_path: Path, staged: tuple[StagedStore, CountingStore], chroma: ChromaStore
) -> None:
    store, _ = staged
    store.add(items("gone", ["secret one"]), vectors(1, seed=5))
    store.flush(timeout_s=60)
    store.add(items("gone", ["secret two", "secret three"]), vectors(2, seed=6))
    store.add(items("kept", ["public"]), vectors(1, seed=7))
    assert store.delete_user("t", "gone") == 3
    assert store.query("t", "gone", vectors(1, seed=6)[0], 5) == []
    with sqlite3.connect(tmp_path / "journal.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM journal WHERE user = 'gone'").fetchone() == (0,)
    assert store.flush(timeout_s=60)
    assert not chroma.collection_exists("t", "gone")
    assert chroma.count("t", "kept") == 1
    # Known ids are forgotten too: the same text said again is a new item.
    assert len(store.add(items("gone", ["secret one"]), vectors(1, seed=5))) == 1


def test_deleted_item_can_be_stored_again(
    staged: tuple[StagedStore, CountingStore], chroma: ChromaStore
) -> None:
    store, _ = staged
    [item] = items("u", ["I moved to Porto."])
    [item_id] = store.add([item], vectors(1, seed=8))
    store.delete("t", "u", [item_id])  # deleted while still staged
    assert store.flush(timeout_s=60) and chroma.count("t", "u") == 0
    assert store.add([item], vectors(1, seed=8)) == [item_id]
    store.flush(timeout_s=60)
    store.delete("t", "u", [item_id])  # and once stored
    assert chroma.count("t", "u") == 0
    assert store.add([item], vectors(1, seed=8)) == [item_id]


def test_an_edit_is_not_overwritten_by_the_staged_original(
    staged: tuple[StagedStore, CountingStore], chroma: ChromaStore
) -> None:
    store, _ = staged
    [item] = items("u", ["I drive a red car."])
    store.add([item], vectors(1, seed=9))
    edited = MemoryItem("t", "u", "I ride a blue bicycle.", id=item.id)
    store.upsert([edited], vectors(1, seed=10))
    assert store.flush(timeout_s=60)
    assert [it.text for it in chroma.get("t", "u")] == ["I ride a blue bicycle."]


def test_writers_wait_then_fail_while_the_store_is_down_and_nothing_is_lost(tmp_path: Path) -> None:
    counting = CountingStore(ChromaStore(path=tmp_path / "chroma", prefix="stg"))
    counting.down = True
    store = StagedStore(
        counting,  # type: ignore[arg-type]
        tmp_path / "journal.sqlite3",
        linger_s=0.0,
        max_staged=3,
        full_timeout_s=0.3,
        retry_s=0.05,
    )
    try:
        assert len(store.add(items("u", ["a", "b", "c"]), vectors(3, seed=11))) == 3
        with pytest.raises(StagingFull):
            store.add(items("u", ["d"]), vectors(1, seed=12))
        assert not store.flush(timeout_s=0.3)
        counting.down = False  # the store is back: the retrying flusher drains the journal
        assert store.flush(timeout_s=60)
        assert sorted(it.text for it in counting.inner.get("t", "u")) == ["a", "b", "c"]
    finally:
        store.close()
