"""Per-user forget generations: a recording that raced a forget writes nothing.

Exchanges are recorded after their response, so a recording can still be on its way (being embedded, queued in
the ingest writer) when `DELETE /admin/users/{user}` lands, on this replica or another. Without a guard it
would write the user back: its items after the forget's delete, its catalog row recreated by the upsert.

Each user has a generation (0 until first forgotten), kept in the catalog's database
(`memory_forget_generations`, keyed by a hash of tenant and user, so the row that outlives a forget holds no
identifier). A forget bumps it first, in its own committed transaction, before anything is deleted. A request
reads it when it starts; every write of that request's memory data (the item commit, the catalog touch)
re-reads it inside its own write transaction and writes nothing for a user whose generation moved on.

Why that is enough: the write's read and the forget's bump are ordered by a lock on the same row.
- PostgreSQL: the write reads the row FOR SHARE (making it first, INSERT .. ON CONFLICT DO NOTHING, on the
  user's first write); the bump updates it. A write that got the row first commits before the bump can, hence before the forget's
  deletes start (and they remove it); a write that comes after the bump sees the new generation (READ
  COMMITTED re-reads the locked row's latest version) and skips the user.
- SQLite (the embedded catalog): a write transaction holds the file's write lock from BEGIN, so a plain read
  inside it is ordered against the bump. Vectors there go to the staging journal and Chroma, which have no
  transaction with the catalog: those writes are ordered against the bump by a per-user lock in this process,
  which is the only writer of an embedded data dir (`holding`).
- A Chroma server for vectors (`memory.store: server`) has no transaction either: its items are checked under
  the same process lock just before they are written, which orders them against a forget on this replica but
  not against one on another replica landing in that instant (the catalog touch is still checked in its
  transaction). pgvector has no such gap.

Cost per write: on PostgreSQL one primary-key read FOR SHARE in a transaction that is open anyway (a user's first
write also inserts its row); bench/forget_generation.py measures it (bench/results/forget_generation.json).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from memory.catalog_schema import forget_generations as table
from rapport.core.database import Database

UserKey = tuple[str, str]
# Stripes of the in-process lock: enough that unrelated users rarely share one, small at any user count.
STRIPES = 64


def user_key(tenant: str, user: str) -> str:
    return hashlib.sha256(f"{tenant}\x00{user}".encode()).hexdigest()


class ForgetGenerations:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._locks = [threading.Lock() for _ in range(STRIPES)]

    # -- reads --------------------------------------------------------------------------------------

    def current(self, tenant: str, user: str) -> int:
        """The user's generation now (a request reads it when it starts)."""
        return self.current_many([(tenant, user)])[(tenant, user)]

    def current_many(self, keys: Iterable[UserKey]) -> dict[UserKey, int]:
        wanted = {user_key(*key): key for key in keys}
        with self._db.read() as conn:
            return self._read(conn, wanted, lock=False)

    def locked(self, conn: Connection, keys: Iterable[UserKey]) -> dict[UserKey, int]:
        """The generations of `keys` inside the caller's write transaction, held until it ends: a forget's bump
        cannot commit in between (see the module docstring)."""
        wanted = {user_key(*key): key for key in keys}
        if not wanted:
            return {}
        if not self._db.is_postgres:
            return self._read(conn, wanted, lock=False)
        found = self._read(conn, wanted, lock=True)
        missing = sorted(k for k in wanted if wanted[k] not in found)
        if missing:
            # FOR SHARE locks only rows that exist: a user's first write makes its row (generation 0), so that a
            # bump racing this write has a row to conflict on, then locks it like the others. Once made, the
            # row stays, and a write costs the one locking read above.
            insert = self._db.insert(table).values([{"user_key": k, "generation": 0} for k in missing])
            conn.execute(insert.on_conflict_do_nothing(index_elements=[table.c.user_key]))
            found.update(self._read(conn, {k: wanted[k] for k in missing}, lock=True))
        return {key: found.get(key, 0) for key in wanted.values()}

    def _read(self, conn: Connection, wanted: dict[str, UserKey], *, lock: bool) -> dict[UserKey, int]:
        stmt = sa.select(table.c.user_key, table.c.generation).where(table.c.user_key.in_(list(wanted)))
        if lock:
            stmt = stmt.order_by(table.c.user_key).with_for_update(read=True)
        found = {str(k): int(g) for k, g in conn.execute(stmt).all()}
        if lock:  # only the rows there (and now locked): the caller decides what a missing one means
            return {wanted[hashed]: g for hashed, g in found.items()}
        return {key: found.get(hashed, 0) for hashed, key in wanted.items()}

    # -- forget -------------------------------------------------------------------------------------

    def bump(self, tenant: str, user: str) -> int:
        """Start a forget: every write begun under an older generation of the user writes nothing from now
        on. Committed before the forget deletes anything; returns the new generation."""
        with self.holding([(tenant, user)]), self._db.write() as conn:
            stmt = self._db.insert(table).values(user_key=user_key(tenant, user), generation=1)
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.user_key], set_={"generation": table.c.generation + 1}
            ).returning(table.c.generation)
            return int(conn.execute(stmt).scalar_one())

    # -- the in-process order (writes with no transaction shared with the catalog) -------------------

    @contextmanager
    def holding(self, keys: Iterable[UserKey]) -> Iterator[None]:
        """Hold the per-user locks of `keys` (in stripe order, so two holders cannot deadlock)."""
        stripes = sorted({hash(key) % STRIPES for key in keys})
        with ExitStack() as stack:
            for stripe in stripes:
                stack.enter_context(self._locks[stripe])
            yield


def admitted(expected: list[int | None], owners: list[UserKey], current: Mapping[UserKey, int]) -> list[bool]:
    """Which writes may go ahead: those begun under the user's current generation (None: begun with no
    generation read, which only internal callers do; admitted)."""
    return [exp is None or current[owner] == exp for exp, owner in zip(expected, owners, strict=True)]
