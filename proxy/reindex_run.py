"""`rapport reindex` and doctor's embedding-model row: the memory stores opened from the settings, as a server
opens them, around memory/reindex.py.

On the embedded default the data dir's lock is taken like a server's (a running server refuses the command).
With shared state (`database_url`) there is no lock to take: stop the replicas first; one started meanwhile
refuses to serve, because the new model is recorded only once every user is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from memory.catalog import Catalog
from memory.catalog_schema import STORE as CATALOG_STORE
from memory.embedding import CachedEmbedder, ModelIdentity, embedder_identity, make_embedder
from memory.embedding_meta import EmbeddingRecord
from memory.reindex import ReindexReport, reindex
from memory.store import MemoryStore
from memory.stores.choose import open_store
from proxy.datadir_lock import DataDirLock
from proxy.settings import RapportSettings
from proxy.stages.memory_plugin import VECTOR_STORE
from rapport.core.database import Databases


def configured_embedder(settings: RapportSettings) -> CachedEmbedder:
    """The configured model on torch (the bulk runtime): every runtime of a model has the same identity."""
    memory = settings.memory
    embedder = make_embedder(
        memory.embedding_model,
        backend="torch",
        batch_size=memory.embedding_batch_size,
        cache_size=0,
        threads=memory.embedding_threads,
        bf16=memory.embedding_bf16,
    )
    assert isinstance(embedder, CachedEmbedder)
    return embedder


@contextmanager
def _catalog(settings: RapportSettings) -> Iterator[tuple[Databases, Catalog]]:
    databases = Databases(settings.database_config())
    try:
        catalog = Catalog(databases.for_store(CATALOG_STORE), migrate=settings.database.migrate_on_start)
        try:
            yield databases, catalog
        finally:
            catalog.close()
    finally:
        databases.close()


@dataclass(frozen=True, slots=True)
class EmbeddingStatus:
    recorded: EmbeddingRecord | None
    configured: ModelIdentity
    unfinished_reindex: str | None

    @property
    def ok(self) -> bool:
        fits = self.recorded is None or self.recorded.matches(self.configured)
        return fits and self.unfinished_reindex is None


def embedding_status(settings: RapportSettings) -> EmbeddingStatus:
    embedder = configured_embedder(settings)
    try:
        configured = embedder_identity(embedder)
    finally:
        embedder.close()
    with _catalog(settings) as (_, catalog):
        return EmbeddingStatus(catalog.embedding.recorded(), configured, catalog.embedding.unfinished_reindex())


def run_reindex(
    settings: RapportSettings,
    *,
    batch_size: int | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_user: Callable[[int], None] | None = None,
) -> ReindexReport:
    """Raises DataDirInUse (a server holds the embedded data dir), ReindexRefused, or a database error."""
    lock = None
    if not settings.shared_state:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = DataDirLock(settings.data_dir)
        lock.acquire()
    embedder = configured_embedder(settings)
    try:
        target = embedder_identity(embedder)
        with _catalog(settings) as (databases, catalog):
            shared = databases.for_store(VECTOR_STORE) if databases.shared else None
            store: MemoryStore = open_store(
                settings.memory,
                settings.data_dir / "memory",
                shared_db=shared,
                dim=target.dim,
                migrate=settings.database.migrate_on_start,
            )
            try:
                return reindex(
                    store,
                    catalog,
                    embedder.encode_sync,
                    target,
                    batch_size=batch_size or settings.memory.embedding_batch_size,
                    on_start=on_start,
                    on_user=on_user,
                )
            finally:
                store.close()
    finally:
        embedder.close()
        if lock is not None:
            lock.release()
