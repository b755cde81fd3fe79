"""Memory items and their vectors in PostgreSQL + pgvector: the `MemoryStore` for shared-state deployments.

One table, `memory_items`, keyed by (tenant, user_id, id), holds every user's items with an `embedding vector`
column. A query searches one user's rows only. How it searches was chosen by measurement (bench/pg_index.py,
numbers in bench/results/pg_index.json):

- an ordinary user: an exact scan of that user's rows, found through the primary key's btree (a prefix
  match on tenant, user_id) and ordered by cosine distance. A user holding a few hundred rows costs a few
  hundred distance computations, and the answer is the exact top-k (recall 1.0).
- a user past `index_threshold` rows: a partial HNSW index over that user's rows only (`WHERE tenant = ...
  AND user_id = ...`), built in the background with `CREATE INDEX CONCURRENTLY` when a write takes the user
  past the threshold. Because the index holds nothing but that user's rows, the filter loses no candidates,
  and `hnsw.ef_search` is set high enough for recall >= 0.99 against the exact scan (0.995 at 100k rows for a
  query near something the user said). A query near nothing of the user's (a random direction) gets about
  0.6: its exact top-10 are barely nearer than the rest (similarity near 0) and the graph walk misses them.

  Rejected: one global HNSW index over all users with a `WHERE tenant, user` filter. pgvector 0.6 walks
  `ef_search` candidates across all users and filters afterwards. With 1k users holding 100 rows each it
  returned 21% of a user's true top-10 at the default ef_search 40 and 99% at 400; with 10k users holding 10
  rows each (1/10,000 of the table) 9% at 40, 25% at 400 and 30% at 1000, pgvector's maximum: fast and wrong,
  and worse the more users share the table.

Nothing per user is kept in the process: which users have an index is read from the catalog (one indexed
lookup by the index's name) on each query, so a replica's memory does not grow with the users it serves.

The column is declared without a dimension (the migration cannot know the embedding model); the dimension is
recorded in `memory_vector_settings` by the first store opened, and every later store must match it. HNSW needs
a fixed dimension, so partial indexes are built on the expression `embedding::vector(d)`, and queries through
them order by the same expression.

Methods are synchronous and blocking, like the Chroma store's: the memory service calls them from worker
threads. Connections come from the `Database`'s pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memory.embedding import Vectors
from memory.items import MemoryItem
from memory.store import Hit, group_by_user
from memory.stores.pg_indexes import (
    DEFAULT_INDEX_THRESHOLD,
    UserIndexes,
    index_name,
    quote_literal,
)
from memory.stores.pg_lexical import add_lexical_columns, add_lexical_stats
from rapport.core.database import Database
from rapport.core.migrations import Migration, Schema, ensure, register

TABLE = "memory_items"
SETTINGS_TABLE = "memory_vector_settings"
# pgvector's HNSW search width for queries through a partial index: see memory/stores/pg_indexes.py.
DEFAULT_EF_SEARCH = 400
# Columns a `get(where=...)` may filter on: the item fields the service filters by.
FILTERABLE = ("role", "source", "conversation_id", "model", "task")
# Rows per multi-row INSERT: 11 parameters a row stays far below PostgreSQL's 65,535 bind parameters.
INSERT_CHUNK = 1000


def _create_schema(conn: Connection, db: Database) -> None:
    conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    conn.exec_driver_sql(
        f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            tenant text NOT NULL,
            user_id text NOT NULL,
            id text NOT NULL,
            text text NOT NULL,
            role text NOT NULL,
            ts double precision NOT NULL,
            conversation_id text,
            model text,
            task text,
            source text NOT NULL,
            embedding vector NOT NULL,
            PRIMARY KEY (tenant, user_id, id)
        )
        """
    )
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {SETTINGS_TABLE} (key text PRIMARY KEY, value text NOT NULL)"
    )


def _migration_1(conn: Connection, db: Database) -> None:
    # Embedded (SQLite) deployments keep vectors in Chroma: there the component has no tables.
    if db.is_postgres:
        _create_schema(conn, db)


def _migration_2(conn: Connection, db: Database) -> None:
    # Full-text search over the items (memory/stores/pg_lexical.py). Adding a stored generated column rewrites
    # the table once, under an exclusive lock: existing rows get their lexemes in the same migration.
    if db.is_postgres:
        add_lexical_columns(conn, TABLE)


def _migration_3(conn: Connection, db: Database) -> None:
    if db.is_postgres:
        add_lexical_stats(conn, TABLE)


SCHEMA = register(
    Schema(
        "memory_vectors",
        "memory",
        (
            Migration(
                1, "memory items with pgvector embeddings, keyed by (tenant, user_id, id)", _migration_1
            ),
            Migration(2, "full-text lexemes of the memory items (generated tsvector, GIN index)", _migration_2),
            Migration(3, "per-user BM25 statistics of the memory items, kept by triggers", _migration_3),
        ),
    )
)


def vector_literal(vector: Vectors) -> str:
    """pgvector's text form; float32 written with 9 significant digits round-trips exactly."""
    row = np.asarray(vector, dtype=np.float32).reshape(-1)
    return "[" + ",".join(format(float(x), ".9g") for x in row) + "]"


def parse_vector(text: str) -> Vectors:
    return np.array(text[1:-1].split(","), dtype=np.float32)


def _row(item: MemoryItem, vector: Vectors) -> dict[str, Any]:
    return {
        "tenant": item.tenant,
        "user_id": item.user,
        "id": item.id,
        "text": item.text,
        "role": item.role,
        "ts": float(item.ts),
        "conversation_id": item.conversation_id,
        "model": item.model,
        "task": item.task,
        "source": item.source,
        "embedding": vector_literal(vector),
    }


_COLUMNS = "tenant, user_id, id, text, role, ts, conversation_id, model, task, source"
_INSERT = (
    f"INSERT INTO {TABLE} ({_COLUMNS}, embedding) VALUES (:tenant, :user_id, :id, :text, :role, :ts, "
    ":conversation_id, :model, :task, :source, CAST(:embedding AS vector))"
)


def _item(row: Sequence[Any]) -> MemoryItem:
    tenant, user, item_id_, text, role, ts, conversation_id, model, task, source = row[:10]
    return MemoryItem(
        tenant=tenant,
        user=user,
        text=text,
        role=role,
        ts=float(ts),
        conversation_id=conversation_id,
        model=model,
        task=task,
        source=source,
        id=item_id_,
    )


class PgVectorStore:
    """`MemoryStore` over one PostgreSQL table (see the module docstring for the layout and why)."""

    def __init__(
        self,
        db: Database,
        dim: int,
        *,
        index_threshold: int = DEFAULT_INDEX_THRESHOLD,
        ef_search: int = DEFAULT_EF_SEARCH,
        migrate_on_start: bool = True,
        build_in_background: bool = True,
    ) -> None:
        if not db.is_postgres:
            raise ValueError("PgVectorStore needs a PostgreSQL database")
        self.db = db
        self.dim = int(dim)
        self.ef_search = int(ef_search)
        self.indexes = UserIndexes(
            db, TABLE, self.dim, threshold=int(index_threshold), background=build_in_background
        )
        ensure(db, SCHEMA, migrate_on_start=migrate_on_start)
        self._check_dim()

    def _check_dim(self) -> None:
        with self.db.write() as conn:
            conn.execute(
                sa.text(
                    f"INSERT INTO {SETTINGS_TABLE} (key, value) VALUES ('dim', :dim) ON CONFLICT DO NOTHING"
                ),
                {"dim": str(self.dim)},
            )
            stored = int(
                conn.execute(sa.text(f"SELECT value FROM {SETTINGS_TABLE} WHERE key = 'dim'")).scalar_one()
            )
        if stored != self.dim:
            raise ValueError(
                f"the memory table holds {stored}-dimensional vectors and this embedding model makes {self.dim}: "
                "vectors of another model cannot be searched together (re-embed, or use the model they were made with)"
            )

    def _vectors(self, vectors: Vectors, n: int) -> Vectors:
        rows = (
            np.asarray(vectors, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, self.dim), np.float32)
        )
        if n and rows.shape[1] != self.dim:
            raise ValueError(f"vectors have {rows.shape[1]} dimensions, the store holds {self.dim}")
        return rows

    # -- writes -------------------------------------------------------------------------------------

    def add(
        self, items: list[MemoryItem], vectors: Vectors, *, admit: Callable[[Connection], list[bool]] | None = None
    ) -> list[str]:
        """Store items whose ids are new. `admit`, called first inside the write transaction, says which items
        may be written (the memory service's forget-generation check, memory/generations.py): the others are
        left out, and the check holds until the commit."""
        rows = self._vectors(vectors, len(items))
        stored: list[str] = []
        with self.db.write() as conn:
            if admit is not None:
                keep = [i for i, ok in enumerate(admit(conn)) if ok]
                if len(keep) < len(items):
                    items, rows = [items[i] for i in keep], rows[keep]
            # Users in key order: the lexical statistics rows (memory/stores/pg_lexical.py) are locked in the
            # same order by every writer.
            for (tenant, user), idx in sorted(group_by_user(items).items()):
                unique: dict[str, int] = {}
                for i in idx:
                    unique.setdefault(items[i].id, i)  # same id twice in one batch: keep the first
                present = self._present(conn, tenant, user, list(unique))
                fresh = [i for item_id_, i in unique.items() if item_id_ not in present]
                if not fresh:
                    continue
                # ON CONFLICT DO NOTHING: a concurrent writer (another replica) may store the same id between
                # the lookup and the insert; that id is then not reported as newly stored by this call.
                stored += self._insert_new(conn, [_row(items[i], rows[i]) for i in fresh])
        self.indexes.after_write({(it.tenant, it.user) for it in items})
        return stored

    def _insert_new(self, conn: Connection, rows: list[dict[str, Any]]) -> list[str]:
        """Insert rows whose ids are absent; returns the ids inserted. One multi-row VALUES statement per chunk
        (executemany cannot say which rows RETURNING came from)."""
        inserted: list[str] = []
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            params: dict[str, Any] = {}
            values: list[str] = []
            for n, row in enumerate(chunk):
                names = []
                for key, value in row.items():
                    params[f"{key}_{n}"] = value
                    names.append(f":{key}_{n}")
                names[-1] = f"CAST({names[-1]} AS vector)"  # embedding is the last column
                values.append("(" + ", ".join(names) + ")")
            sql = (
                f"INSERT INTO {TABLE} ({_COLUMNS}, embedding) VALUES {', '.join(values)} "
                "ON CONFLICT DO NOTHING RETURNING id"
            )
            inserted += [str(v) for v in conn.execute(sa.text(sql), params).scalars().all()]
        return inserted

    def upsert(self, items: list[MemoryItem], vectors: Vectors) -> None:
        if not items:
            return
        rows = self._vectors(vectors, len(items))
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for item, vector in zip(items, rows, strict=True):
            latest[(item.tenant, item.user, item.id)] = _row(item, vector)  # last of a repeated id wins
        update = ", ".join(
            f"{c} = EXCLUDED.{c}"
            for c in ("text", "role", "ts", "conversation_id", "model", "task", "source", "embedding")
        )
        with self.db.write() as conn:
            conn.execute(
                sa.text(_INSERT + f" ON CONFLICT (tenant, user_id, id) DO UPDATE SET {update}"),
                list(latest.values()),
            )
        self.indexes.after_write({(it.tenant, it.user) for it in items})

    def delete(self, tenant: str, user: str, ids: list[str]) -> None:
        if not ids:
            return
        with self.db.write() as conn:
            conn.execute(
                sa.text(f"DELETE FROM {TABLE} WHERE tenant = :t AND user_id = :u AND id = ANY(:ids)"),
                {"t": tenant, "u": user, "ids": list(ids)},
            )

    def delete_user(self, tenant: str, user: str) -> int:
        with self.db.write() as conn:
            count = conn.execute(
                sa.text(f"DELETE FROM {TABLE} WHERE tenant = :t AND user_id = :u"), {"t": tenant, "u": user}
            ).rowcount
        self.indexes.drop(tenant, user)
        return int(count)

    # -- reads --------------------------------------------------------------------------------------

    def query(self, tenant: str, user: str, vector: Vectors, n: int) -> list[Hit]:
        if n <= 0:
            return []
        q = vector_literal(self._vectors(vector, 1)[0])
        with self.db.read() as conn:
            if self.indexes.ready(conn, tenant, user):
                # Through the user's partial index: the WHERE must repeat its predicate literally for the planner
                # to prove the index applies (a bound parameter cannot be matched against it).
                conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {max(self.ef_search, n)}")
                # Statistics can lag a user who just crossed the threshold (rows=1 estimates make a sort look
                # cheaper): with sorting priced out, the planner takes the index's ordered scan.
                conn.exec_driver_sql("SET LOCAL enable_sort = off")
                expr = f"(embedding::vector({self.dim}))"
                inner = (
                    f"SELECT {_COLUMNS}, embedding, {expr} <=> CAST(:q AS vector({self.dim})) AS distance "
                    f"FROM {TABLE} WHERE tenant = {quote_literal(tenant)} AND user_id = {quote_literal(user)} "
                    f"ORDER BY {expr} <=> CAST(:q AS vector({self.dim})) LIMIT :n"
                )
            else:
                inner = (
                    f"SELECT {_COLUMNS}, embedding, embedding <=> CAST(:q AS vector) AS distance "
                    f"FROM {TABLE} WHERE tenant = :t AND user_id = :u "
                    "ORDER BY embedding <=> CAST(:q AS vector) LIMIT :n"
                )
            # The vectors are turned into text only for the k rows kept: formatting every scanned row's
            # vector cost more than the distances (measured: 80 ms against 4 ms for a 5,000-row user).
            sql = f"SELECT {_COLUMNS}, embedding::text, distance FROM ({inner}) AS top ORDER BY distance"
            rows = conn.execute(sa.text(sql), {"q": q, "t": tenant, "u": user, "n": n}).all()
        return [Hit(_item(row), 1.0 - float(row[11]), parse_vector(row[10])) for row in rows]

    def get(
        self, tenant: str, user: str, ids: list[str] | None = None, where: dict[str, Any] | None = None
    ) -> list[MemoryItem]:
        clauses = ["tenant = :t", "user_id = :u"]
        params: dict[str, Any] = {"t": tenant, "u": user}
        if ids is not None:
            clauses.append("id = ANY(:ids)")
            params["ids"] = list(ids)
        for n, (key, value) in enumerate((where or {}).items()):
            if key not in FILTERABLE:
                raise ValueError(f"cannot filter memory items on {key!r}")
            clauses.append(f"{key} = :w{n}")
            params[f"w{n}"] = None if value is None else str(value)
        sql = f"SELECT {_COLUMNS} FROM {TABLE} WHERE {' AND '.join(clauses)} ORDER BY ts, id"
        with self.db.read() as conn:
            return [_item(row) for row in conn.execute(sa.text(sql), params).all()]

    def get_vectors(self, tenant: str, user: str, ids: list[str]) -> dict[str, Vectors]:
        if not ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                sa.text(
                    f"SELECT id, embedding::text FROM {TABLE} WHERE tenant = :t AND user_id = :u AND id = ANY(:ids)"
                ),
                {"t": tenant, "u": user, "ids": list(ids)},
            ).all()
        return {str(r[0]): parse_vector(r[1]) for r in rows}

    def present(self, tenant: str, user: str, ids: list[str]) -> set[str]:
        """Which of `ids` the user has stored."""
        if not ids:
            return set()
        with self.db.read() as conn:
            return self._present(conn, tenant, user, ids)

    def ids(self, tenant: str, user: str) -> set[str]:
        """Every id the user has stored."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.text(f"SELECT id FROM {TABLE} WHERE tenant = :t AND user_id = :u"),
                {"t": tenant, "u": user},
            ).scalars()
            return {str(r) for r in rows}

    def count(self, tenant: str, user: str) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.text(f"SELECT count(*) FROM {TABLE} WHERE tenant = :t AND user_id = :u"),
                    {"t": tenant, "u": user},
                ).scalar_one()
            )

    def collection_exists(self, tenant: str, user: str) -> bool:
        """Whether anything of the user is left: rows, or the user's partial index."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.text(
                    f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE tenant = :t AND user_id = :u), to_regclass(:i)"
                ),
                {"t": tenant, "u": user, "i": index_name(tenant, user)},
            ).one()
        return bool(row[0]) or row[1] is not None

    def heartbeat(self) -> bool:
        try:
            self.db.ping()
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Wait for index builds this process started; the pool belongs to the `Database`."""
        self.indexes.wait()

    # -- per-user partial indexes -------------------------------------------------------------------

    def _present(self, conn: Connection, tenant: str, user: str, ids: Iterable[str]) -> set[str]:
        rows = conn.execute(
            sa.text(f"SELECT id FROM {TABLE} WHERE tenant = :t AND user_id = :u AND id = ANY(:ids)"),
            {"t": tenant, "u": user, "ids": list(ids)},
        ).scalars()
        return {str(r) for r in rows}

    # -- the per-user partial indexes (memory/stores/pg_indexes.py) ---------------------------------

    def has_index(self, tenant: str, user: str) -> bool:
        """Whether the user's partial index is built and valid (queries use it)."""
        with self.db.read() as conn:
            return self.indexes.ready(conn, tenant, user)

    def build_index(self, tenant: str, user: str) -> bool:
        return self.indexes.build(tenant, user)

    def wait_for_indexes(self, timeout_s: float | None = None) -> bool:
        return self.indexes.wait(timeout_s)
