"""Which vector store the memory service runs on, from its settings and the server's database.

- No shared database (the embedded default): Chroma under `<data_dir>/memory/chroma` (or a Chroma server),
  behind the write-behind staging journal (`memory/staging.py`) when `staged_writes` is on. Unchanged.
- A shared PostgreSQL database (`database_url` set): nothing of memory lives in the data dir. Vectors go to
  pgvector (`PgVectorStore`) in that database, or to a Chroma server when `memory.store` is `server`; either
  way without the staging journal. The journal acknowledges a write once it is in a SQLite file on the
  replica's disk, and shared state must not keep anything on a replica's disk (another replica could not see
  it, and it dies with the replica); PgVectorStore ingests fast enough without it (bench/results/pg_index.json:
  109 items/s with 1 writer, 901 with 64).
"""

from __future__ import annotations

from pathlib import Path

from memory.config import MemorySettings
from memory.pg_store import PgVectorStore
from memory.staging import StagedStore
from memory.store import ChromaStore, MemoryStore
from rapport.core.database import Database


def chroma_server(settings: MemorySettings) -> ChromaStore:
    return ChromaStore(
        host=settings.chroma.host,
        port=settings.chroma.port,
        ssl=settings.chroma.ssl,
        headers=settings.chroma.headers,
        layout=settings.collection_layout,
        prefix=settings.collection_prefix,
    )


def open_store(
    settings: MemorySettings, root: Path, *, shared_db: Database | None, dim: int | None, migrate: bool
) -> MemoryStore:
    """The service's vector store. `root` is `<data_dir>/memory`, touched only without `shared_db`;
    `dim` (the embedding dimension) is needed for pgvector only."""
    if shared_db is not None:
        if settings.store == "server":
            return chroma_server(settings)
        if dim is None:
            raise ValueError("the pgvector store needs the embedding dimension")
        return PgVectorStore(shared_db, dim, migrate_on_start=migrate)
    store: MemoryStore
    if settings.store == "server":
        store = chroma_server(settings)
    else:
        store = ChromaStore(
            path=root / "chroma",
            layout=settings.collection_layout,
            prefix=settings.collection_prefix,
            max_open_collections=settings.max_open_collections,
        )
    if settings.staged_writes:
        store = StagedStore(
            store,
            root / "journal.sqlite3",
            max_staged=settings.staged_max_items,
            linger_s=settings.staged_linger_ms / 1000.0,
            sole_writer=settings.store == "embedded",
        )
    return store
