"""Write-behind staging in front of the vector store: a write is durable in a local journal at once and
reaches the store later, grouped per user.

Why: with one collection per user (the layout that keeps reads fast), every Chroma write call costs about
5 ms of CPU whatever its size, so a batch that touches 32 users costs 32 calls, and a 2-core box tops out near
150 items/s (bench/memory.py). Here a batch is acknowledged once it is in a SQLite journal (one fsynced
transaction), and a flusher thread moves journal entries into the store user by user. While it works, more
items pile up per user, so under load each store call carries more items: group commit, self-adjusting.

Reads see staged items. `query` merges a user's staged items in by exact cosine; every other operation on a
user first settles (flushes) that user's staged items, so listing, counting, editing, deleting and
forgetting see one consistent store. After a crash, the journal is replayed on start; flushing is an upsert,
so replaying an entry that already reached the store is harmless.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memory.embedding import Vectors
from memory.items import MemoryItem
from memory.store import ChromaStore, Hit, group_by_user

log = logging.getLogger("rapport.memory.staging")
UserKey = tuple[str, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    id TEXT NOT NULL,
    document TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
)
"""


class StagingFull(RuntimeError):
    """The store has not kept up: too many items are waiting for it (for example, a Chroma server is down)."""


@dataclass(slots=True)
class _Entry:
    seq: int
    item: MemoryItem
    vector: Vectors


class StagedStore:
    """A `MemoryStore` that stages writes in a journal and flushes them to `inner` in per-user groups."""

    def __init__(
        self,
        inner: ChromaStore,
        journal: Path,
        *,
        max_staged: int = 50_000,
        linger_s: float = 5.0,
        sole_writer: bool = True,
        known_users: int = 2048,
        full_timeout_s: float = 30.0,
        retry_s: float = 1.0,
    ) -> None:
        self.inner = inner
        self.linger_s = linger_s
        # The ids each recently written user has in the store, so that dedupe costs no store call. Only sound
        # when this process is the store's only writer (embedded Chroma); with a shared server, ask it.
        self.sole_writer = sole_writer
        self._known: OrderedDict[UserKey, set[str]] = OrderedDict()
        self._known_users = known_users
        self.max_staged = max_staged
        self.full_timeout_s = full_timeout_s
        self.retry_s = retry_s
        journal.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(journal, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk
        self._db.execute(_SCHEMA)
        self._db_lock = threading.Lock()
        # One lock for the in-memory mirror of the journal; it also wakes the flusher and blocked writers.
        self._state = threading.Condition()
        self._staged: dict[UserKey, dict[str, _Entry]] = {}
        self._count = 0
        # Serialize everything that touches one user's store content (flush, delete, edit); striped so that
        # the table stays small however many users there are.
        self._user_locks = [threading.RLock() for _ in range(64)]
        self._add_lock = threading.Lock()
        self._closed = False
        self._hurry = threading.Event()  # cuts a linger short: closing, or someone waiting in flush()
        self.flushes = 0  # store calls made by the flusher (one per user per round)
        self._replay()
        self._thread = threading.Thread(target=self._run, name="rapport-memory-flush", daemon=True)
        self._thread.start()

    # -- journal ------------------------------------------------------------------------------------

    def _replay(self) -> None:
        rows = self._db.execute(
            "SELECT seq, id, document, metadata, vector FROM journal ORDER BY seq"
        ).fetchall()
        for seq, item_id, document, metadata, vector in rows:
            item = MemoryItem.from_chroma(item_id, document, json.loads(metadata))
            self._stage(_Entry(seq, item, np.frombuffer(vector, dtype=np.float32).copy()))
        if rows:
            log.info("replaying %d staged memory items from the journal", len(rows))

    def _stage(self, entry: _Entry) -> None:
        bucket = self._staged.setdefault((entry.item.tenant, entry.item.user), {})
        if entry.item.id not in bucket:
            self._count += 1
        bucket[entry.item.id] = entry

    def _journal_append(self, entries: list[tuple[MemoryItem, Vectors]]) -> list[int]:
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seqs = []
                for item, vector in entries:
                    cursor = self._db.execute(
                        "INSERT INTO journal (tenant, user, id, document, metadata, vector) VALUES (?,?,?,?,?,?)",
                        (
                            item.tenant,
                            item.user,
                            item.id,
                            item.text,
                            json.dumps(item.metadata()),
                            np.asarray(vector, dtype=np.float32).tobytes(),
                        ),
                    )
                    seqs.append(int(cursor.lastrowid or 0))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seqs

    def _journal_drop(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._db_lock:
            self._db.executemany("DELETE FROM journal WHERE seq = ?", [(s,) for s in seqs])

    def staged_count(self) -> int:
        with self._state:
            return self._count

    # -- writes -------------------------------------------------------------------------------------

    def add(self, items: list[MemoryItem], vectors: Vectors) -> list[str]:
        """Stage items not already stored or staged (by id); durable when this returns."""
        with self._add_lock:  # two concurrent adds of one item must not both count it as new
            fresh: list[tuple[MemoryItem, Vectors]] = []
            for (tenant, user), idx in group_by_user(items).items():
                unique: dict[str, int] = {}
                for i in idx:
                    unique.setdefault(items[i].id, i)
                # Staged first, then the store: the flusher removes an entry from the mirror only after the
                # store has it, so checking in this order cannot miss an item that is moving between them.
                with self._state:
                    staged = set(self._staged.get((tenant, user), {}))
                candidates = [item_id for item_id in unique if item_id not in staged]
                present = self._stored(tenant, user, candidates) if candidates else set()
                fresh += [(items[unique[i]], vectors[unique[i]]) for i in candidates if i not in present]
            if not fresh:
                return []
            self._wait_for_room(len(fresh))
            seqs = self._journal_append(fresh)
            with self._state:
                for seq, (item, vector) in zip(seqs, fresh, strict=True):
                    self._stage(_Entry(seq, item, np.asarray(vector, dtype=np.float32)))
                    known = self._known.get((item.tenant, item.user))
                    if known is not None:
                        known.add(item.id)
                self._state.notify_all()
        return [item.id for item, _ in fresh]

    def _stored(self, tenant: str, user: str, ids: list[str]) -> set[str]:
        """Which of `ids` the store holds for the user: from the known-id cache when that is sound."""
        if not self.sole_writer:
            return self.inner.present(tenant, user, ids)
        key = (tenant, user)
        with self._state:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
                return {i for i in ids if i in known}
        with self._user_lock(key):  # no delete of this user may run between reading and caching its ids
            known = self.inner.ids(tenant, user)
            with self._state:
                known |= set(self._staged.get(key, {}))
                self._known[key] = known
                while len(self._known) > self._known_users:
                    self._known.popitem(last=False)
        return {i for i in ids if i in known}

    def _forget_known(self, key: UserKey, ids: set[str] | None) -> None:
        with self._state:
            known = self._known.get(key)
            if known is None:
                return
            if ids is None:
                del self._known[key]
            else:
                known.difference_update(ids)

    def _wait_for_room(self, n: int) -> None:
        with self._state:
            if not self._state.wait_for(
                lambda: self._count + n <= self.max_staged or self._count == 0 or self._closed,
                timeout=self.full_timeout_s,
            ):
                raise StagingFull(
                    f"{self._count} memory items are waiting for the vector store; it is down or too slow"
                )

    def upsert(self, items: list[MemoryItem], vectors: Vectors) -> None:
        for key, idx in group_by_user(items).items():
            with self._user_lock(key):
                self._flush_user(key)
                self.inner.upsert([items[i] for i in idx], vectors[idx])
                with self._state:
                    known = self._known.get(key)
                    if known is not None:
                        known.update(items[i].id for i in idx)

    def delete(self, tenant: str, user: str, ids: list[str]) -> None:
        key = (tenant, user)
        with self._user_lock(key):
            self._discard(key, set(ids))
            self.inner.delete(tenant, user, ids)
            self._forget_known(key, set(ids))

    def delete_user(self, tenant: str, user: str) -> int:
        key = (tenant, user)
        with self._user_lock(key):
            dropped = self._discard(key, None)
            removed = self.inner.delete_user(tenant, user)
            self._forget_known(key, None)
            return dropped + removed

    def _discard(self, key: UserKey, ids: set[str] | None) -> int:
        """Drop staged entries of one user (all, or those ids) without writing them to the store."""
        with self._state:
            bucket = self._staged.get(key, {})
            gone = [e for e in bucket.values() if ids is None or e.item.id in ids]
            for entry in gone:
                del bucket[entry.item.id]
            if not bucket:
                self._staged.pop(key, None)
            self._count -= len(gone)
            self._state.notify_all()
        self._journal_drop([e.seq for e in gone])
        return len(gone)

    # -- reads --------------------------------------------------------------------------------------

    def query(self, tenant: str, user: str, vector: Vectors, n: int) -> list[Hit]:
        # Snapshot the staged entries before asking the store: an entry flushed in between is then seen
        # twice (and merged), never zero times.
        with self._state:
            staged = list(self._staged.get((tenant, user), {}).values())
        hits = self.inner.query(tenant, user, vector, n)
        if not staged or n <= 0:
            return hits
        matrix = np.stack([e.vector for e in staged])
        sims = matrix @ np.asarray(vector, dtype=np.float32).reshape(-1)
        merged = {h.item.id: h for h in hits}
        for entry, sim in zip(staged, sims, strict=True):
            merged.setdefault(entry.item.id, Hit(entry.item, float(sim), entry.vector))
        return sorted(merged.values(), key=lambda h: h.similarity, reverse=True)[:n]

    def get(
        self, tenant: str, user: str, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> list[MemoryItem]:
        self.settle(tenant, user)
        return self.inner.get(tenant, user, ids, where)

    def get_vectors(self, tenant: str, user: str, ids: list[str]) -> dict[str, Vectors]:
        self.settle(tenant, user)
        return self.inner.get_vectors(tenant, user, ids)

    def count(self, tenant: str, user: str) -> int:
        self.settle(tenant, user)
        return self.inner.count(tenant, user)

    def collection_exists(self, tenant: str, user: str) -> bool:
        return self.inner.collection_exists(tenant, user)

    def heartbeat(self) -> bool:
        return self.inner.heartbeat()

    # -- flushing -----------------------------------------------------------------------------------

    def _user_lock(self, key: UserKey) -> threading.RLock:
        return self._user_locks[hash(key) % len(self._user_locks)]

    def settle(self, tenant: str, user: str) -> None:
        """Write one user's staged items to the store now (callers that read the store directly)."""
        key = (tenant, user)
        with self._user_lock(key):
            self._flush_user(key)

    def _flush_user(self, key: UserKey) -> None:
        """Move one user's staged entries into the store; the caller holds that user's lock."""
        with self._state:
            entries = list(self._staged.get(key, {}).values())
        if not entries:
            return
        self.inner.upsert([e.item for e in entries], np.stack([e.vector for e in entries]))
        self._journal_drop([e.seq for e in entries])
        with self._state:
            bucket = self._staged.get(key, {})
            for entry in entries:
                # An entry restaged meanwhile (same id, newer seq) stays for the next round.
                if bucket.get(entry.item.id) is entry:
                    del bucket[entry.item.id]
                    self._count -= 1
            if not bucket:
                self._staged.pop(key, None)
            self._state.notify_all()
        self.flushes += 1

    def flush(self, timeout_s: float | None = None) -> bool:
        """Block until nothing is staged (or the timeout passes); True when everything reached the store."""
        self._hurry.set()
        with self._state:
            return self._state.wait_for(lambda: self._count == 0, timeout=timeout_s)

    def _run(self) -> None:
        while True:
            with self._state:
                self._state.wait_for(lambda: self._count > 0 or self._closed)
                if self._count == 0:
                    return  # closed and drained
                crowded = self._count >= self.max_staged // 2
            if not crowded:
                # Let items pile up per user so that one store call carries several of them. Nobody waits
                # on this: writers are acknowledged from the journal and queries merge staged items in.
                self._hurry.wait(self.linger_s)
            with self._state:
                keys = list(self._staged)
                if not self._closed:
                    self._hurry.clear()
            failed = 0
            for key in keys:
                try:
                    with self._user_lock(key):
                        self._flush_user(key)
                except Exception:
                    failed += 1
                    log.exception("flushing staged memory items of one user failed; they stay in the journal")
            if failed:
                if self._closed:
                    return  # the journal keeps them for the next start
                self._hurry.wait(self.retry_s)  # back off while the store is failing

    def close(self) -> None:
        """Flush what is staged (as far as the store lets us), then stop; anything left stays journaled."""
        if self._closed:
            return
        with self._state:
            self._closed = True
            self._state.notify_all()
        self._hurry.set()
        self._thread.join()
        with self._db_lock:
            self._db.close()
