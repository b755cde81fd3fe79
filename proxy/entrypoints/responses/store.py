"""Stored responses: what `previous_response_id` continues from and `GET /v1/responses/{id}` returns.

Rapport owns the ids and the conversation state, scoped by (tenant, user): the same id asked for by another
tenant or user does not exist for them. Rows older than the retention are not returned and are purged as new
ones are written. `ResponseStore` is what the serving needs; `SqlResponseStore` keeps them on a `Database`
(the embedded `responses.sqlite3`, or the PostgreSQL database replicas share: a response stored through one
replica continues through any other). Table and migrations: store_schema.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Row

from proxy.entrypoints.responses.store_schema import SCHEMA, responses
from rapport.core.database import Database
from rapport.core.migrations import open_store
from rapport.core.userdata import TablesPart

# Anonymous requests (no user named) keep their responses under this user key, per tenant.
ANONYMOUS = ""
# Expired rows deleted per save: retention is enforced as rows are written, in small steps, so no sweep
# holds a lock for long.
PURGE_BATCH = 100


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    user: str
    created_at: float
    response: dict[str, Any]
    # The conversation up to and including this response, as chat messages (without instructions, which
    # do not carry over to a continuation).
    history: list[dict[str, Any]]


class ResponseStore(Protocol):
    def save(self, stored: StoredResponse) -> None: ...

    def get(self, tenant: str, user: str, response_id: str) -> StoredResponse | None: ...

    def delete(self, tenant: str, user: str, response_id: str) -> bool: ...

    def forget_user(self, tenant: str, user: str) -> int: ...

    def export_user(self, tenant: str, user: str) -> list[StoredResponse]: ...

    def close(self) -> None: ...


class SqlResponseStore:
    """Blocking calls, one transaction each; the serving runs them off the event loop."""

    def __init__(self, database: Database | Path | str, retention_s: float, *, migrate: bool = True) -> None:
        # A path is the embedded convenience for tools and tests: the store then owns that SQLite file.
        self.db, self._owns_db = open_store(database, SCHEMA, migrate=migrate)
        self._retention_s = retention_s

    def _cutoff(self) -> float:
        return time.time() - self._retention_s

    @staticmethod
    def _scope(tenant: str, user: str) -> sa.ColumnElement[bool]:
        return sa.and_(responses.c.tenant == tenant, responses.c.user == user)

    def save(self, stored: StoredResponse) -> None:
        t = responses
        values = {"created_at": stored.created_at, "response": orjson.dumps(stored.response),
                  "history": orjson.dumps(stored.history)}
        stmt = self.db.insert(t).values(id=stored.id, tenant=stored.tenant, user=stored.user, **values)
        expired = (
            sa.select(t.c.tenant, t.c.user, t.c.id)
            .where(t.c.created_at < self._cutoff())
            .limit(PURGE_BATCH)
            # PostgreSQL: replicas purging at once take different rows instead of waiting on each other.
            .with_for_update(skip_locked=True)
        )
        with self.db.write() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.tenant, t.c.user, t.c.id], set_=values))
            conn.execute(sa.delete(t).where(sa.tuple_(t.c.tenant, t.c.user, t.c.id).in_(expired)))

    def get(self, tenant: str, user: str, response_id: str) -> StoredResponse | None:
        t = responses
        query = sa.select(t).where(self._scope(tenant, user), t.c.id == response_id, t.c.created_at >= self._cutoff())
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return _row(row) if row is not None else None

    def delete(self, tenant: str, user: str, response_id: str) -> bool:
        t = responses
        with self.db.write() as conn:
            return bool(conn.execute(sa.delete(t).where(self._scope(tenant, user), t.c.id == response_id)).rowcount)

    def forget_user(self, tenant: str, user: str) -> int:
        with self.db.write() as conn:
            return int(conn.execute(sa.delete(responses).where(self._scope(tenant, user))).rowcount)

    def export_user(self, tenant: str, user: str) -> list[StoredResponse]:
        t = responses
        query = (
            sa.select(t)
            .where(self._scope(tenant, user), t.c.created_at >= self._cutoff())
            .order_by(t.c.created_at)
        )
        with self.db.read() as conn:
            return [_row(r) for r in conn.execute(query)]

    def close(self) -> None:
        # A Database handed in belongs to the server's `Databases`, which closes it.
        if self._owns_db:
            self.db.close()


def _row(row: Row[Any]) -> StoredResponse:
    return StoredResponse(row.id, row.tenant, row.user, row.created_at, orjson.loads(row.response),
                          orjson.loads(row.history))


def responses_part(db: Database) -> TablesPart:
    """Stored responses in the user-data registry: forgotten, exported and imported with the rest of the user.
    Rows are keyed by (tenant, user, id): an import writes each response under its id for the target user."""
    return TablesPart("responses", db, {"responses": responses})
