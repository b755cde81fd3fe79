"""Copy memory items with their vectors from the embedded Chroma of a data dir into pgvector.

The vectors are read from Chroma and written as they are (never re-embedded: the same model made them, and
re-embedding a large store would take hours). Items acknowledged but still in the write-behind staging journal
are moved into Chroma first, by opening the journal the way the server does and flushing it, so the copy sees
every acknowledged item. `PgVectorStore.add` stores only ids the user does not have yet: re-running copies
nothing twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from memory.config import MemorySettings
from memory.items import MemoryItem
from memory.pg_store import TABLE, PgVectorStore
from memory.staging import StagedStore
from memory.store import ChromaStore
from rapport.core.database import Database

UserKey = tuple[str, str]
# Items read from Chroma per page (documents, metadata and 384-float vectors: a few MB a page).
PAGE = 500
FLUSH_TIMEOUT_S = 300.0


class StagingNotFlushed(RuntimeError):
    pass


@dataclass(slots=True)
class VectorCheck:
    source: int = 0
    found: int = 0
    target_total: int = 0
    by_user: dict[UserKey, tuple[int, int]] = field(default_factory=dict)


class EmbeddedMemory:
    """The embedded memory of one data dir: its Chroma, with the staging journal flushed into it."""

    def __init__(self, data_dir: Path, settings: MemorySettings) -> None:
        self.root = data_dir / "memory"
        self.prefix = settings.collection_prefix
        self.layout = settings.collection_layout
        # The same residency bound as a server: a migration walks every user's collection, which unbounded would
        # keep them all resident (and past chromadb's own cache, drop unsaved writes on eviction).
        self.chroma = ChromaStore(
            path=self.root / "chroma",
            layout=self.layout,
            prefix=self.prefix,
            max_open_collections=settings.max_open_collections,
        )

    @property
    def exists(self) -> bool:
        return (self.root / "chroma").is_dir()

    def flush_staging(self) -> int:
        """Replay the staging journal into Chroma (what the server's start does), wait until it is empty;
        returns how many items were waiting."""
        journal = self.root / "journal.sqlite3"
        if not journal.exists():
            return 0
        staged = StagedStore(self.chroma, journal, linger_s=0.0, sole_writer=True)
        try:
            waiting = staged.staged_count()
            if not staged.flush(timeout_s=FLUSH_TIMEOUT_S):
                raise StagingNotFlushed(
                    f"{staged.staged_count()} staged memory items could not be written to Chroma within "
                    f"{FLUSH_TIMEOUT_S:.0f} s; nothing of memory was copied (run the migration again)"
                )
            return waiting
        finally:
            staged.close()

    def _collections(self) -> list[Any]:
        names = [c if isinstance(c, str) else c.name for c in self.chroma.client.list_collections()]
        wanted = f"{self.prefix}-shared" if self.layout == "shared" else f"{self.prefix}-u-"
        mine = [n for n in names if (n == wanted if self.layout == "shared" else n.startswith(wanted))]
        return [self.chroma.client.get_collection(n, embedding_function=None) for n in sorted(mine)]

    def count(self) -> int:
        return sum(int(c.count()) for c in self._collections())

    def pages(self, *, vectors: bool = True) -> Iterator[tuple[list[MemoryItem], np.ndarray | None]]:
        include = ["documents", "metadatas", *(["embeddings"] if vectors else [])]
        for col in self._collections():
            total = int(col.count())
            for offset in range(0, total, PAGE):
                got = col.get(include=include, limit=PAGE, offset=offset)
                items = [
                    MemoryItem.from_chroma(i, d, dict(m))
                    for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
                ]
                embs = np.asarray(got["embeddings"], dtype=np.float32) if vectors else None
                yield items, embs


def dimension(memory: EmbeddedMemory) -> int | None:
    """The embedding dimension of the stored vectors (None: no items)."""
    for items, embs in memory.pages():
        if items and embs is not None:
            return int(embs.shape[1])
    return None


def copy_vectors(memory: EmbeddedMemory, target: PgVectorStore, advance: Callable[[int], None]) -> int:
    """Write every item with its stored vector; returns how many were newly stored."""
    stored = 0
    for items, embs in memory.pages():
        if items and embs is not None:
            stored += len(target.add(items, embs))
        advance(len(items))
    target.wait_for_indexes(timeout_s=FLUSH_TIMEOUT_S)
    return stored


def check_vectors(memory: EmbeddedMemory, target: PgVectorStore, db: Database) -> VectorCheck:
    """Every source item's id looked up in the target, per user."""
    checked = VectorCheck()
    source: Counter[UserKey] = Counter()
    found: Counter[UserKey] = Counter()
    for items, _ in memory.pages(vectors=False):
        by_user: dict[UserKey, list[str]] = {}
        for item in items:
            by_user.setdefault((item.tenant, item.user), []).append(item.id)
        for user, ids in by_user.items():
            source[user] += len(ids)
            found[user] += len(target.present(user[0], user[1], ids))
    checked.source = sum(source.values())
    checked.found = sum(found.values())
    checked.by_user = {u: (n, found[u]) for u, n in source.items()}
    checked.target_total = target_total(db)
    return checked


def target_total(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar_one())
