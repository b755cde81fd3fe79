"""Vector storage behind a small interface; the implementation is Chroma (embedded or server).

Methods are synchronous and blocking: the memory service calls them from worker threads.
Layout: `per_user` keeps one collection per (tenant, user), so a query searches only that user's index
with no metadata filter; `shared` keeps one collection and filters by tenant and user (measured slower,
see bench/memory.py) and exists for that comparison.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Literal, Protocol

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
    ) -> None:
        import chromadb
        from chromadb.config import Settings

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
            self._client = chromadb.PersistentClient(path=str(path), settings=settings)
        self.layout = layout
        self.prefix = prefix
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()

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

    def _collection(self, tenant: str, user: str, create: bool) -> Any:
        name = self._name(tenant, user)
        found = self._collections.get(name)
        if found is not None:
            return found
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

    def present(self, tenant: str, user: str, ids: list[str]) -> set[str]:
        """Which of `ids` the user's collection holds (no collection is created to answer)."""
        col = self._collection(tenant, user, create=False)
        if col is None or not ids:
            return set()
        return set(col.get(ids=ids, where=self._where(tenant, user), include=[])["ids"])

    def ids(self, tenant: str, user: str) -> set[str]:
        """Every id the user has in the store."""
        col = self._collection(tenant, user, create=False)
        if col is None:
            return set()
        return set(col.get(where=self._where(tenant, user), include=[])["ids"])

    def upsert(self, items: list[MemoryItem], vectors: Vectors) -> None:
        for (tenant, user), idx in group_by_user(items).items():
            col = self._collection(tenant, user, create=True)
            col.upsert(
                ids=[items[i].id for i in idx],
                embeddings=np.asarray(vectors[idx], dtype=np.float32),
                documents=[items[i].text for i in idx],
                metadatas=[items[i].metadata() for i in idx],  # type: ignore[misc]
            )

    def delete(self, tenant: str, user: str, ids: list[str]) -> None:
        col = self._collection(tenant, user, create=False)
        if col is not None and ids:
            col.delete(ids=ids, where=self._where(tenant, user))

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

    def get_vectors(self, tenant: str, user: str, ids: list[str]) -> dict[str, Vectors]:
        col = self._collection(tenant, user, create=False)
        if col is None or not ids:
            return {}
        result = col.get(ids=ids, where=self._where(tenant, user), include=["embeddings"])
        return {
            i: np.asarray(e, dtype=np.float32)
            for i, e in zip(result["ids"], result["embeddings"], strict=True)
        }

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
            self.client.get_collection(self._name(tenant, user), embedding_function=None)
        except Exception:
            return False
        return True

    def heartbeat(self) -> bool:
        try:
            self.client.heartbeat()
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Release the client. Why: chromadb keeps every embedded client's system (its SQLite handle and the
        loaded HNSW segments of each collection opened) in a process-wide cache until the client is closed, so a
        process that builds and drops stores (tests, `rapport db migrate`) would otherwise keep them all."""
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
