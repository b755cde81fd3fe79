"""Vector storage behind a small interface; the implementation is Chroma (embedded or server).

Methods are synchronous and blocking: the memory service calls them from worker threads.
Layout: `per_user` keeps one collection per (tenant, user), so a query searches only that user's index
with no metadata filter; `shared` keeps one collection and filters by tenant and user (measured slower,
see bench/memory.py) and exists for that comparison.

Residency (embedded): chromadb keeps every collection it has opened loaded (about 2.7 MB for a small
user's HNSW index), so a process grew with every user it served. Letting chromadb evict is not safe in
1.5.9: an index evicted in-process is reloaded from its last persisted copy without the log written since,
so a user's latest items silently vanish from queries, or the query fails ("Nothing found on disk") when the
index was never persisted (reproduced in tests/memory/test_chroma_residency.py's notes). A fresh client does
replay that log. So with `max_open_collections` set, once that many distinct collections have been opened
the store waits for the calls in flight, closes its client (which frees every loaded index), hands the freed
heap back to the OS (glibc kept it otherwise) and opens a new one; chromadb's own cache is sized above the
bound so that it never evicts in between. bench/replica_rss.py measures a replica over 10k users.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

import numpy as np

from memory.embedding import Vectors
from memory.items import MemoryItem


class Hit:
    __slots__ = ("embedding", "item", "similarity")

    def __init__(self, item: MemoryItem, similarity: float, embedding: Vectors) -> None:
        self.item = item
        self.similarity = similarity
        self.embedding = embedding


class MemoryStore(Protocol):
    def add(self, items: list[MemoryItem], vectors: Vectors) -> list[str]:
        """Store items not already present (by id); returns the ids newly stored."""
        ...

    def upsert(self, items: list[MemoryItem], vectors: Vectors) -> None: ...

    def query(self, tenant: str, user: str, vector: Vectors, n: int) -> list[Hit]: ...

    def get(
        self, tenant: str, user: str, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> list[MemoryItem]: ...

    def count(self, tenant: str, user: str) -> int: ...

    def delete(self, tenant: str, user: str, ids: list[str]) -> None: ...

    def delete_user(self, tenant: str, user: str) -> int: ...

    def heartbeat(self) -> bool: ...

    def close(self) -> None: ...


# Chroma replays a collection's not-yet-persisted log on every write, so with its defaults (persist every
# 1000 items) a write to a user with 300 items cost 16 ms here against 6 ms with these (bench notes in the
# README); reads are unaffected. Applies to collections created from now on.
HNSW_WRITE_TUNING = {"hnsw:batch_size": 20, "hnsw:sync_threshold": 100}


def collection_name(prefix: str, tenant: str, user: str) -> str:
    # Chroma names allow [a-zA-Z0-9._-] only; ids of any shape map to a fixed-length digest.
    digest = hashlib.sha256(f"{tenant}\x00{user}".encode()).hexdigest()[:40]
    return f"{prefix}-u-{digest}"


P = ParamSpec("P")
T = TypeVar("T")


class _Gate:
    """Shared use of the client by any number of calls, or its exclusive replacement. Reentrant for a
    thread already inside (add calls present): such a call never waits for a replacement that is itself
    waiting for that thread's outer call to finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._replacing = False
        self._depth = threading.local()

    def held(self) -> bool:
        return int(getattr(self._depth, "n", 0)) > 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        depth = int(getattr(self._depth, "n", 0))
        if depth == 0:
            with self._cond:
                while self._replacing:
                    self._cond.wait()
                self._active += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._cond:
                    self._active -= 1
                    if self._active == 0:
                        self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._replacing:
                self._cond.wait()
            self._replacing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._replacing = False
                self._cond.notify_all()


def _one_user(
    method: Callable[Concatenate[ChromaStore, str, str, P], T],
) -> Callable[Concatenate[ChromaStore, str, str, P], T]:
    @functools.wraps(method)
    def gated(self: ChromaStore, tenant: str, user: str, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._using([(tenant, user)]):
            return method(self, tenant, user, *args, **kwargs)

    return gated


def _items_users(
    method: Callable[[ChromaStore, list[MemoryItem], Vectors], T],
) -> Callable[[ChromaStore, list[MemoryItem], Vectors], T]:
    @functools.wraps(method)
    def gated(self: ChromaStore, items: list[MemoryItem], vectors: Vectors) -> T:
        with self._using(list(group_by_user(items))):
            return method(self, items, vectors)

    return gated


class ChromaStore:
    def __init__(
        self,
        *,
        path: Path | None = None,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        headers: dict[str, str] | None = None,
        layout: Literal["per_user", "shared"] = "per_user",
        prefix: str = "rapport",
        max_open_collections: int | None = None,
    ) -> None:
        import chromadb
        from chromadb.config import Settings

        from memory.chroma_client import open_embedded_client


        if max_open_collections is not None and max_open_collections < 1:
            raise ValueError("max_open_collections must be at least 1")

        settings = Settings(anonymized_telemetry=False)
        self._client: Any = None
        self._client_lock = threading.Lock()
        if host is not None:
            # HttpClient contacts the server when built; building it on first use lets Rapport start (and
            # serve degraded) while the Chroma server is down, and reconnect once it is back.
            self._connect: Any = lambda: chromadb.HttpClient(
                host=host, port=port, ssl=ssl, headers=headers, settings=settings
            )
        else:
            assert path is not None, "embedded mode needs a path"
            path.mkdir(parents=True, exist_ok=True)
            # Twice the bound: chromadb's cache admits by frequency once full, so it must never be full.
            capacity = None if max_open_collections is None else 2 * max_open_collections
            self._connect = lambda: open_embedded_client(path, capacity)
            self._client = self._connect()
        self.layout = layout
        self.prefix = prefix
        # Only the embedded client is reopened: a server keeps its own memory.
        self.max_open_collections = max_open_collections if host is None else None
        self.reopens = 0
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._gate = _Gate()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    # -- collections --------------------------------------------------------------------------------

    def _name(self, tenant: str, user: str) -> str:
        if self.layout == "shared":
            return f"{self.prefix}-shared"
        return collection_name(self.prefix, tenant, user)

    @contextmanager
    def _using(self, users: list[tuple[str, str]]) -> Iterator[None]:
        """Every public call runs inside this: it reopens the client first when these users' collections
        would take the open set past the bound, then holds the client open (shared) until the call ends."""
        bound = self.max_open_collections
        if bound is not None and not self._gate.held():
            names = {self._name(t, u) for t, u in users}
            with self._lock:
                full = len(self._collections.keys() | names) > bound and bool(self._collections)
            if full:
                self._reopen(bound)
        with self._gate.shared():
            yield

    def _reopen(self, bound: int) -> None:
        with self._gate.exclusive():
            with self._lock:
                if len(self._collections) < bound:  # another thread reopened while this one waited
                    return
                self._collections.clear()
                client, self._client = self._client, None
            if client is not None:
                client.close()
                from memory.chroma_client import return_freed_memory

                return_freed_memory()
            self._client = self._connect()
            self.reopens += 1

    def _collection(self, tenant: str, user: str, create: bool) -> Any:
        name = self._name(tenant, user)
        with self._lock:
            found = self._collections.get(name)
            if found is not None:
                return found
            meta: dict[str, Any] = {"hnsw:space": "cosine", **HNSW_WRITE_TUNING}
            if self.layout == "per_user":
                meta.update({"tenant": tenant, "user": user})
            if create:
                col = self.client.get_or_create_collection(name, metadata=meta, embedding_function=None)
            else:
                client = self.client  # outside the try: an unreachable server is a fault, not "no collection"
                try:
                    col = client.get_collection(name, embedding_function=None)
                except Exception:
                    return None
            self._collections[name] = col
            return col

    def open_collections(self) -> int:
        """How many collections the current client has opened (at most `max_open_collections`, except
        for one call that names more users than that)."""
        with self._lock:
            return len(self._collections)

    def _where(self, tenant: str, user: str, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = []
        if self.layout == "shared":
            clauses += [{"tenant": tenant}, {"user": user}]
        if extra:
            clauses += [{k: v} for k, v in extra.items()]
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    # -- writes -------------------------------------------------------------------------------------

    @_items_users
    def add(self, items: list[MemoryItem], vectors: Vectors) -> list[str]:
        stored: list[str] = []
        for (tenant, user), idx in group_by_user(items).items():
            # Same id twice in one batch: keep the first.
            unique: dict[str, int] = {}
            for i in idx:
                unique.setdefault(items[i].id, i)
            col = self._collection(tenant, user, create=True)
            present = self.present(tenant, user, list(unique))  # finds the collection just opened
            fresh = [i for item_id_, i in unique.items() if item_id_ not in present]
            if not fresh:
                continue
            col.add(
                ids=[items[i].id for i in fresh],
                embeddings=np.asarray(vectors[fresh], dtype=np.float32),
                documents=[items[i].text for i in fresh],
                metadatas=[items[i].metadata() for i in fresh],  # type: ignore[misc]
            )
            stored += [items[i].id for i in fresh]
        return stored

    @_one_user
    def present(self, tenant: str, user: str, ids: list[str]) -> set[str]:
        """Which of `ids` the user's collection holds (no collection is created to answer)."""
        col = self._collection(tenant, user, create=False)
        if col is None or not ids:
            return set()
        return set(col.get(ids=ids, where=self._where(tenant, user), include=[])["ids"])

    @_one_user
    def ids(self, tenant: str, user: str) -> set[str]:
        """Every id the user has in the store."""
        col = self._collection(tenant, user, create=False)
        if col is None:
            return set()
        return set(col.get(where=self._where(tenant, user), include=[])["ids"])

    @_items_users
    def upsert(self, items: list[MemoryItem], vectors: Vectors) -> None:
        for (tenant, user), idx in group_by_user(items).items():
            col = self._collection(tenant, user, create=True)
            col.upsert(
                ids=[items[i].id for i in idx],
                embeddings=np.asarray(vectors[idx], dtype=np.float32),
                documents=[items[i].text for i in idx],
                metadatas=[items[i].metadata() for i in idx],  # type: ignore[misc]
            )

    @_one_user
    def delete(self, tenant: str, user: str, ids: list[str]) -> None:
        col = self._collection(tenant, user, create=False)
        if col is not None and ids:
            col.delete(ids=ids, where=self._where(tenant, user))

    @_one_user
    def delete_user(self, tenant: str, user: str) -> int:
        col = self._collection(tenant, user, create=False)
        if col is None:
            return 0
        if self.layout == "shared":
            ids = col.get(where=self._where(tenant, user), include=[])["ids"]
            if ids:
                col.delete(ids=ids)
            return len(ids)
        count = int(col.count())
        name = self._name(tenant, user)
        with self._lock:
            self._collections.pop(name, None)
            self.client.delete_collection(name)
        return count

    # -- reads --------------------------------------------------------------------------------------

    @_one_user
    def query(self, tenant: str, user: str, vector: Vectors, n: int) -> list[Hit]:
        col = self._collection(tenant, user, create=False)
        if col is None or n <= 0:
            return []
        result = col.query(
            query_embeddings=np.asarray(vector, dtype=np.float32).reshape(1, -1),
            n_results=n,
            where=self._where(tenant, user),
            include=["documents", "metadatas", "distances", "embeddings"],
        )
        ids = result["ids"][0]
        if not ids:
            return []
        docs = result["documents"][0]
        metas = result["metadatas"][0]
        dists = result["distances"][0]
        embs = np.asarray(result["embeddings"][0], dtype=np.float32)
        return [
            Hit(MemoryItem.from_chroma(ids[i], docs[i], dict(metas[i])), 1.0 - float(dists[i]), embs[i])
            for i in range(len(ids))
        ]

    @_one_user
    def get(
        self, tenant: str, user: str, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> list[MemoryItem]:
        col = self._collection(tenant, user, create=False)
        if col is None:
            return []
        result = col.get(ids=ids, where=self._where(tenant, user, where), include=["documents", "metadatas"])
        items = [
            MemoryItem.from_chroma(i, d, dict(m))
            for i, d, m in zip(result["ids"], result["documents"], result["metadatas"], strict=True)
        ]
        items.sort(key=lambda it: it.ts)
        return items

    @_one_user
    def get_vectors(self, tenant: str, user: str, ids: list[str]) -> dict[str, Vectors]:
        col = self._collection(tenant, user, create=False)
        if col is None or not ids:
            return {}
        result = col.get(ids=ids, where=self._where(tenant, user), include=["embeddings"])
        return {
            i: np.asarray(e, dtype=np.float32)
            for i, e in zip(result["ids"], result["embeddings"], strict=True)
        }

    @_one_user
    def count(self, tenant: str, user: str) -> int:
        col = self._collection(tenant, user, create=False)
        if col is None:
            return 0
        if self.layout == "shared":
            return len(col.get(where=self._where(tenant, user), include=[])["ids"])
        return int(col.count())

    def collection_exists(self, tenant: str, user: str) -> bool:
        """Asks Chroma itself (not the handle cache): used to prove a forgotten user is gone."""
        try:
            with self._gate.shared():  # not mid-reopen, where a second client would be built
                self.client.get_collection(self._name(tenant, user), embedding_function=None)
        except Exception:
            return False
        return True

    def heartbeat(self) -> bool:
        try:
            with self._gate.shared():
                self.client.heartbeat()
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Release the client. Why: chromadb keeps every embedded client's system (its SQLite handle and the
        loaded HNSW segments of each collection opened) in a process-wide cache until the client is closed, so a
        process that builds and drops stores (tests, `rapport db migrate`) would otherwise keep them all."""
        with self._gate.exclusive():
            client, self._client = self._client, None
            self._collections.clear()
        close = getattr(client, "close", None)
        if close is not None:
            close()


def group_by_user(items: list[MemoryItem]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item.tenant, item.user), []).append(i)
    return groups
