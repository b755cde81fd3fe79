"""Which embedding model a store's vectors were built with, and the guard that refuses to serve another.

Two models of the same dimension (all-MiniLM-L6-v2 and bge-small-en-v1.5 are both 384) answer each other's
queries without an error: the neighbours are simply wrong. So the catalog's database keeps one row naming the
model (a digest of its files, memory/embedding.py `embedder_identity`) and dimension; the first start records
it, and every later start compares. A mismatch, or a `rapport reindex` that has not finished, fails the start
with a message naming the setting and the command. Synchronous (called from a worker thread at start and by
the reindex command).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa

from memory.catalog_schema import embedding_model, reindex_progress
from memory.embedding import ModelIdentity, embedder_identity
from memory.generations import user_key
from rapport.core.database import Database

# One store per catalog today; the key leaves room for more (e.g. a separate fact index).
VECTORS_SCOPE = "vectors"

log = logging.getLogger("rapport.memory")


class EmbeddingMismatch(RuntimeError):
    """The configured embedding model is not the one the store's vectors were built with."""


@dataclass(frozen=True, slots=True)
class EmbeddingRecord:
    name: str
    digest: str
    dim: int
    recorded_at: float

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.digest}"

    def matches(self, identity: ModelIdentity) -> bool:
        return self.digest == identity.digest and self.dim == identity.dim


class EmbeddingMeta:
    def __init__(self, db: Database, scope: str = VECTORS_SCOPE) -> None:
        self._db = db
        self._scope = scope

    def recorded(self) -> EmbeddingRecord | None:
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(embedding_model).where(embedding_model.c.scope == self._scope)
            ).mappings().first()
        if row is None:
            return None
        return EmbeddingRecord(row["model_name"], row["model_digest"], int(row["dim"]), float(row["recorded_at"]))

    def record(self, identity: ModelIdentity) -> None:
        values = {"model_name": identity.name, "model_digest": identity.digest, "dim": identity.dim,
                  "recorded_at": time.time()}
        with self._db.write() as conn:
            stmt = self._db.insert(embedding_model).values(scope=self._scope, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["scope"], set_=values))

    def unfinished_reindex(self) -> str | None:
        """The digest of the model an interrupted `rapport reindex` was moving to, if any."""
        with self._db.read() as conn:
            return conn.execute(sa.select(reindex_progress.c.target_digest).limit(1)).scalar_one_or_none()

    def check_or_record(self, identity: ModelIdentity) -> EmbeddingRecord:
        """At start: record the configured model on first use, else require it to be the recorded one."""
        pending = self.unfinished_reindex()
        if pending is not None:
            raise EmbeddingMismatch(
                f"a `rapport reindex` to the embedding model {pending} has not finished: part of the store holds "
                f"its vectors, part the old model's. Run `rapport reindex` again to finish it (it resumes)."
            )
        found = self.recorded()
        if found is None:
            # Rows written by racing replicas agree (same settings), so the last writer wins harmlessly.
            self.record(identity)
            found = self.recorded()
            assert found is not None
        if not found.matches(identity):
            raise EmbeddingMismatch(
                f"the memory store was built with the embedding model {found.model_id} ({found.dim} dimensions), "
                f"but memory.embedding_model is set to {identity.model_id} ({identity.dim} dimensions): its vectors "
                "would answer the other model's queries with wrong neighbours. Set memory.embedding_model back, or "
                "run `rapport reindex` (with the server stopped) to re-embed the store with the configured model."
            )
        return found

    # -- the reindex checkpoint ---------------------------------------------------------------------

    def reindexed_users(self, target: ModelIdentity) -> set[str]:
        """Keys (memory/generations.py `user_key`) of the users already re-embedded for `target`."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(reindex_progress.c.user_key).where(reindex_progress.c.target_digest == target.digest)
            ).scalars().all()
        return set(rows)

    def start_reindex(self, target: ModelIdentity) -> None:
        """Drop a checkpoint left by a reindex to some other model: its users must be done again."""
        with self._db.write() as conn:
            conn.execute(sa.delete(reindex_progress).where(reindex_progress.c.target_digest != target.digest))

    def mark_reindexed(self, tenant: str, user: str, target: ModelIdentity, items: int) -> None:
        values = {"target_digest": target.digest, "items": items, "done_at": time.time()}
        with self._db.write() as conn:
            stmt = self._db.insert(reindex_progress).values(user_key=user_key(tenant, user), **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["user_key"], set_=values))

    def finish_reindex(self, target: ModelIdentity) -> None:
        """Every user is re-embedded: the store now belongs to `target`, and the checkpoint goes."""
        self.record(target)
        with self._db.write() as conn:
            conn.execute(sa.delete(reindex_progress))


def check_embedder(meta: EmbeddingMeta, embedder: object) -> EmbeddingRecord | None:
    """The start check: the embedder's model (loaded: its dimension is read) against the recorded one.
    An embedder that cannot say which model it runs (no `model_name` or `model_id`) is served unchecked,
    with a warning: refusing it would break embedders plugged in from outside."""
    try:
        identity = embedder_identity(embedder)
    except TypeError as exc:
        log.warning("embedding model not checked against the store: %s", exc)
        return None
    return meta.check_or_record(identity)
