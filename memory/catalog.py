"""The memory catalog: which users exist (counts, last seen) and their versioned summaries.

Its tables (memory/catalog_schema.py) live in the catalog's `Database`: the embedded
`memory/catalog.sqlite3`, or the PostgreSQL database that every replica shares. Synchronous; the memory
service calls it from its worker threads.

Safe under concurrent replicas: counts are added by upserts (`items = items + excluded.items`), never read and
written back; a summary's version is chosen under the user's row lock; forget is one transaction that takes that
lock first, so a summary job finishing at the same moment either lands before the forget (and is removed with
it) or finds the user gone.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from memory.catalog_schema import SCHEMA, summaries, users
from memory.embedding_meta import EmbeddingMeta
from memory.generations import ForgetGenerations
from rapport.core.database import Database
from rapport.core.migrations import open_store


@dataclass(slots=True)
class UserRecord:
    tenant: str
    user: str
    items: int
    since_summary: int
    created_at: float
    last_seen: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Summary:
    tenant: str
    user: str
    task: str
    version: int
    text: str
    item_count: int
    model: str | None
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _user(row: RowMapping) -> UserRecord:
    return UserRecord(
        tenant=row["tenant"],
        user=row["user"],
        items=int(row["items"]),
        since_summary=int(row["since_summary"]),
        created_at=float(row["created_at"]),
        last_seen=float(row["last_seen"]),
    )


def _summary(row: RowMapping) -> Summary:
    return Summary(
        tenant=row["tenant"],
        user=row["user"],
        task=row["task"],
        version=int(row["version"]),
        text=row["text"],
        item_count=int(row["item_count"]),
        model=row["model"],
        created_at=float(row["created_at"]),
    )


def _of_user(table: sa.Table, tenant: str, user: str) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.tenant == tenant, table.c.user == user)


# Latest summaries kept in memory (embedded only), least recently read out first: one entry per (user, task)
# served, so unbounded it grew with every user a process ever served.
SUMMARY_CACHE_ENTRIES = 4096


class Catalog:
    def __init__(
        self,
        database: Database | Path | str,
        *,
        cache_summaries: bool | None = None,
        migrate: bool = True,
        summary_cache_entries: int = SUMMARY_CACHE_ENTRIES,
    ) -> None:
        self._db, self._owns_db = open_store(database, SCHEMA, migrate=migrate)
        # The per-user forget generations live in the catalog's database (memory/generations.py).
        self.generations = ForgetGenerations(self._db)
        # The embedding model the vectors were built with, and the reindex checkpoint (memory/embedding_meta.py).
        self.embedding = EmbeddingMeta(self._db)
        # The latest summary per (tenant, user, task) is read on every request. Embedded, this process is the
        # database's only writer, so it is kept in memory. Shared, another replica may write or forget it at
        # any moment, so it is read from the database each time (one primary-key lookup): a cached summary
        # would outlive a forget made on another replica.
        self._cache_summaries = (not self._db.is_postgres) if cache_summaries is None else cache_summaries
        self._latest: OrderedDict[tuple[str, str, str], Summary | None] = OrderedDict()
        self._latest_max = summary_cache_entries
        self._cache_lock = threading.Lock()
        # Bumped by every change of a summary: a read that started before it does not fill the cache.
        self._generation = 0

    def close(self) -> None:
        if self._owns_db:
            self._db.close()

    # -- users --------------------------------------------------------------------------------------

    def _upsert(self, conn: Connection, added: dict[tuple[str, str], int], now: float) -> list[UserRecord]:
        """One INSERT .. ON CONFLICT DO UPDATE for every user (one round trip), rows in key order: two replicas
        touching the same users lock their rows in the same order, so they cannot deadlock."""
        stmt = self._db.insert(users).values(
            [
                {"tenant": tenant, "user": user, "items": count, "since_summary": count, "created_at": now,
                 "last_seen": now}
                for (tenant, user), count in sorted(added.items())
            ]
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[users.c.tenant, users.c.user],
            set_={
                # `items` is also a method of column collections: indexed by name.
                "items": users.c["items"] + stmt.excluded["items"],
                "since_summary": users.c.since_summary + stmt.excluded.since_summary,
                "last_seen": stmt.excluded.last_seen,
            },
        ).returning(*users.c)
        return [_user(row) for row in conn.execute(stmt).mappings().all()]

    def touch(self, tenant: str, user: str, added: int) -> UserRecord:
        [record] = self.touch_many({(tenant, user): added})
        return record

    def touch_many(
        self, added: dict[tuple[str, str], int], *, generations: Mapping[tuple[str, str], int] | None = None
    ) -> list[UserRecord]:
        """`touch` for several users in one statement and one commit; the records in the order given.

        With `generations` (the forget generation each user's items were written under), a user whose
        generation moved on since (forgotten in between) is left out, checked inside this transaction: a
        recording that raced a forget does not recreate the user's row (memory/generations.py)."""
        if generations is not None:
            with self._db.write() as conn:
                current = self.generations.locked(conn, [key for key in added if key in generations])
                added = {key: n for key, n in added.items() if key in current and current[key] == generations[key]}
                records = self._upsert(conn, added, time.time()) if added else []
        elif not added:
            return []
        else:
            with self._db.write() as conn:
                records = self._upsert(conn, added, time.time())
        # RETURNING promises no order: match the records to the keys.
        by_key = {(r.tenant, r.user): r for r in records}
        return [by_key[key] for key in added]

    def set_count(self, tenant: str, user: str, items: int) -> None:
        with self._db.write() as conn:
            conn.execute(sa.update(users).where(_of_user(users, tenant, user)).values(items=items))

    def reset_since_summary(self, tenant: str, user: str) -> None:
        with self._db.write() as conn:
            conn.execute(sa.update(users).where(_of_user(users, tenant, user)).values(since_summary=0))

    def user(self, tenant: str, user: str) -> UserRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(users).where(_of_user(users, tenant, user))).mappings().first()
        return _user(row) if row is not None else None

    def users(self, tenant: str | None, limit: int, offset: int) -> tuple[list[UserRecord], int]:
        where = users.c.tenant == tenant if tenant is not None else sa.true()
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(users).where(where).order_by(users.c.last_seen.desc(), users.c.user).limit(limit).offset(offset)
            ).mappings().all()
            total = conn.execute(sa.select(sa.func.count()).select_from(users).where(where)).scalar_one()
        return [_user(row) for row in rows], int(total)

    # -- summaries ----------------------------------------------------------------------------------

    def add_summary(
        self,
        tenant: str,
        user: str,
        task: str,
        text: str,
        item_count: int,
        model: str | None,
        *,
        generation: int | None = None,
    ) -> Summary:
        """`generation`: the user's forget generation when the job read its items; a forget since (even one
        followed by new exchanges that recreated the user) means the summary is of forgotten data: LookupError."""
        with self._db.write() as conn:
            # The generation's row first, then the user's row: the order `touch_many` takes them in.
            if generation is not None and self.generations.locked(conn, [(tenant, user)])[(tenant, user)] != generation:
                raise LookupError(f"user {user!r} of tenant {tenant!r} was forgotten after the summary's items were read")
            # Only a known user gets a summary: a user forgotten while the job ran stays forgotten. The row
            # lock orders this against a concurrent forget and against another replica's summary of the user
            # (which would pick the same version number).
            known = conn.execute(
                sa.select(users.c.tenant).where(_of_user(users, tenant, user)).with_for_update()
            ).first()
            if known is None:
                raise LookupError(f"user {user!r} of tenant {tenant!r} does not exist")
            version = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(summaries.c.version), 0) + 1).where(
                    _of_user(summaries, tenant, user), summaries.c.task == task
                )
            ).scalar_one()
            summary = Summary(tenant, user, task, int(version), text, item_count, model, time.time())
            conn.execute(sa.insert(summaries).values(**summary.to_dict()))
        with self._cache_lock:
            self._generation += 1
            if self._cache_summaries:
                self._remember((tenant, user, task), summary)
        return summary

    def _remember(self, key: tuple[str, str, str], summary: Summary | None) -> None:
        """Cache one latest summary (the caller holds the cache lock)."""
        self._latest[key] = summary
        self._latest.move_to_end(key)
        while len(self._latest) > self._latest_max:
            self._latest.popitem(last=False)

    def cached_summaries(self) -> int:
        with self._cache_lock:
            return len(self._latest)

    def latest_summary(self, tenant: str, user: str, task: str) -> Summary | None:
        key = (tenant, user, task)
        with self._cache_lock:
            if key in self._latest:
                self._latest.move_to_end(key)
                return self._latest[key]
            generation = self._generation
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(summaries)
                .where(_of_user(summaries, tenant, user), summaries.c.task == task)
                .order_by(summaries.c.version.desc())
                .limit(1)
            ).mappings().first()
        summary = _summary(row) if row is not None else None
        with self._cache_lock:
            if self._cache_summaries and generation == self._generation:
                self._remember(key, summary)
        return summary

    def summaries(self, tenant: str, user: str, task: str | None = None) -> list[Summary]:
        where = _of_user(summaries, tenant, user)
        if task is not None:
            where = sa.and_(where, summaries.c.task == task)
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(summaries).where(where).order_by(summaries.c.task, summaries.c.version.desc())
            ).mappings().all()
        return [_summary(row) for row in rows]

    def import_summary(self, summary: Summary) -> None:
        """Write one summary version as given, replacing the same version if it exists."""
        row = summary.to_dict()
        stmt = self._db.insert(summaries).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[summaries.c.tenant, summaries.c.user, summaries.c.task, summaries.c.version],
            set_={name: stmt.excluded[name] for name in ("text", "item_count", "model", "created_at")},
        )
        with self._db.write() as conn:
            conn.execute(stmt)
        with self._cache_lock:
            self._generation += 1
            self._latest.pop((summary.tenant, summary.user, summary.task), None)

    # -- forget -------------------------------------------------------------------------------------

    def forget(self, tenant: str, user: str) -> dict[str, int]:
        """Remove the user's row and every summary version in one transaction.

        The user's row goes first: that waits for (or blocks) a summary being added under its row lock, so the
        summaries deleted next include one that committed just before."""
        with self._db.write() as conn:
            removed_users = conn.execute(sa.delete(users).where(_of_user(users, tenant, user))).rowcount
            removed_summaries = conn.execute(sa.delete(summaries).where(_of_user(summaries, tenant, user))).rowcount
        with self._cache_lock:
            self._generation += 1
            for key in [k for k in self._latest if k[0] == tenant and k[1] == user]:
                self._latest.pop(key, None)
        return {"summaries": int(removed_summaries), "users": int(removed_users)}

    def raw_rows(self, tenant: str, user: str) -> int:
        """How many rows of any table still mention the user (for tests and audits)."""
        with self._db.read() as conn:
            a = conn.execute(sa.select(sa.func.count()).select_from(users).where(_of_user(users, tenant, user)))
            count = int(a.scalar_one())
            b = conn.execute(
                sa.select(sa.func.count()).select_from(summaries).where(_of_user(summaries, tenant, user))
            )
            count += int(b.scalar_one())
        return count
