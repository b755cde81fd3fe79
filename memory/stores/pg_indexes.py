"""Per-user partial HNSW indexes over the memory table: when to build one, building it without blocking
writers, using it only once it is valid, and dropping it with the user.

Why per user, and the threshold and search width chosen: memory/pg_store.py and bench/pg_index.py. Nothing per
user is held in the process: whether a user has an index is read from the catalog; the only state here is the
set of builds this process is running now.
"""

from __future__ import annotations

import hashlib
import logging
import threading

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database

log = logging.getLogger(__name__)

# Rows a user holds before the store builds that user's partial HNSW index. Measured (bench/pg_index.py, 1.15M
# rows over 10k users, 2 busy cores): the exact scan's p50/p95 is 3.7/5.4 ms at 100 rows, 10.7/16.4 ms at 5k,
# 14.9/22.7 ms at 10k, 38/49 ms at 30k and 301/381 ms at 100k, while a query through a partial index is about
# 12/23 ms whatever the user's size: they cross near 10k rows.
DEFAULT_INDEX_THRESHOLD = 10_000
# HNSW build parameters (pgvector's defaults). The store's ef_search (DEFAULT_EF_SEARCH) was raised from pgvector's 40 until
# recall@10 against the exact scan reached >= 0.99 on the bench's 100k-row user: 0.77 at 40, 0.92 at 100, 0.96-0.98
# at 200, 0.995-0.9975 at 400 (queries near a stored item; SET LOCAL: only the query's transaction gets it).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64


def index_name(tenant: str, user: str) -> str:
    """The partial index of one user: a fixed-length digest (identifiers are limited to 63 bytes)."""
    digest = hashlib.sha256(f"{tenant}\x00{user}".encode()).hexdigest()[:32]
    return f"memory_items_hnsw_{digest}"


def quote_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1). Used only in index DDL and
    in the query that must match a partial index's predicate, where a bound parameter cannot be used."""
    if "\x00" in value:
        raise ValueError("tenant and user ids cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"


class UserIndexes:
    """The partial indexes of one table's users (`table` has tenant, user_id and an `embedding vector` column)."""

    def __init__(
        self, db: Database, table: str, dim: int, *, threshold: int, background: bool = True
    ) -> None:
        self.db = db
        self.table = table
        self.dim = dim
        self.threshold = threshold
        self.background = background
        # Builds this process has started and not finished: bounded by concurrent builds, not by users.
        self._building: dict[str, threading.Thread] = {}
        self._building_lock = threading.Lock()

    def ready(self, conn: Connection, tenant: str, user: str) -> bool:
        """A valid (fully built) partial index exists for the user. A build in progress or one that failed is
        not valid, and the query takes the exact scan meanwhile."""
        found = conn.execute(
            sa.text(
                "SELECT i.indisvalid AND i.indisready FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
            ),
            {"name": index_name(tenant, user)},
        ).scalar_one_or_none()
        return bool(found)

    def has(self, tenant: str, user: str) -> bool:
        with self.db.read() as conn:
            return self.ready(conn, tenant, user)

    def after_write(self, users: set[tuple[str, str]]) -> None:
        """After a write: start the partial-index build of each user who has just crossed the threshold.

        The check costs one catalog lookup plus, for a user without an index, a count bounded by the
        threshold (an index-only probe of the primary key at offset threshold - 1).
        """
        if self.threshold <= 0:
            return
        for tenant, user in users:
            name = index_name(tenant, user)
            with self._building_lock:
                if name in self._building:
                    continue
            with self.db.read() as conn:
                row = conn.execute(
                    sa.text(
                        f"SELECT to_regclass(:i) IS NOT NULL, EXISTS (SELECT 1 FROM {self.table} "
                        "WHERE tenant = :t AND user_id = :u OFFSET :k LIMIT 1)"
                    ),
                    {"i": name, "t": tenant, "u": user, "k": self.threshold - 1},
                ).one()
            exists, crossed = bool(row[0]), bool(row[1])
            if crossed and not exists:
                self._start(tenant, user)

    def _start(self, tenant: str, user: str) -> None:
        name = index_name(tenant, user)
        if not self.background:
            self.build(tenant, user)
            return
        with self._building_lock:
            if name in self._building:
                return
            thread = threading.Thread(
                target=self._build_logged, args=(tenant, user), name=f"rapport-hnsw-{name[-8:]}", daemon=True
            )
            self._building[name] = thread
        thread.start()

    def _build_logged(self, tenant: str, user: str) -> None:
        name = index_name(tenant, user)
        try:
            self.build(tenant, user)
        except Exception:
            # The user keeps the exact scan (correct, slower); the next write past the threshold retries.
            log.exception("building the partial vector index %s failed", name)
        finally:
            with self._building_lock:
                self._building.pop(name, None)

    def build(self, tenant: str, user: str) -> bool:
        """Build the user's partial HNSW index (blocking); False when another process is building it.

        CREATE INDEX CONCURRENTLY does not block the table's writers; it cannot run inside a transaction, so it
        runs on an autocommit connection. A session advisory lock keeps two replicas from building the same
        index; an invalid index left by a failed build is dropped and built again.
        """
        name = index_name(tenant, user)
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with self.db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
                return False
            try:
                state = conn.execute(
                    sa.text(
                        "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                        "WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
                    ),
                    {"name": name},
                ).scalar_one_or_none()
                if state is True:
                    return True
                if state is False:
                    conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                conn.exec_driver_sql(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {self.table} USING hnsw "
                    f"((embedding::vector({self.dim})) vector_cosine_ops) "
                    f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                    f"WHERE tenant = {quote_literal(tenant)} AND user_id = {quote_literal(user)}"
                )
                log.info("built the partial vector index %s", name)
                return True
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    def drop(self, tenant: str, user: str) -> None:
        name = index_name(tenant, user)
        with self._building_lock:
            building = self._building.get(name)
        if building is not None:
            building.join()
        with self.db.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            # CONCURRENTLY: a plain DROP INDEX would lock the whole table against every user's queries.
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Join the index builds this process started; True when none is left running."""
        with self._building_lock:
            threads = list(self._building.values())
        for thread in threads:
            thread.join(timeout_s)
        return not any(t.is_alive() for t in threads)
