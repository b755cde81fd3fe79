"""Per-user value-model weights (the VAS part of a user's profile), scoped by (tenant, user), on a `Database`:
the embedded SQLite file or the PostgreSQL database replicas share (table and migrations: store_schema.py).

Blocking calls; the proxy runs them off the event loop. Each call is one transaction, so a profile put on
one replica is what the next request reads on any other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa

from rapport.core.database import Database
from rapport.core.migrations import open_store
from reasoning.vas.store_schema import SCHEMA, vas_profiles


class Profile:
    __slots__ = ("beta", "updated_at", "weights")

    def __init__(self, weights: dict[str, float], beta: float | None, updated_at: float) -> None:
        self.weights = weights
        self.beta = beta
        self.updated_at = updated_at


def _scope(tenant: str, user: str) -> sa.ColumnElement[bool]:
    return sa.and_(vas_profiles.c.tenant == tenant, vas_profiles.c.user == user)


class ProfileStore:
    def __init__(self, database: Database | Path | str, *, migrate: bool = True) -> None:
        # A path is the embedded convenience for tools and tests: the store then owns that SQLite file.
        self.db, self._owns_db = open_store(database, SCHEMA, migrate=migrate)

    def get(self, tenant: str, user: str) -> Profile | None:
        t = vas_profiles
        with self.db.read() as conn:
            row = conn.execute(sa.select(t.c.weights, t.c.beta, t.c.updated_at).where(_scope(tenant, user))).first()
        if row is None:
            return None
        return Profile({k: float(v) for k, v in json.loads(row.weights).items()}, row.beta, row.updated_at)

    def put(self, tenant: str, user: str, weights: dict[str, float], beta: float | None) -> Profile:
        now = time.time()
        values = {"weights": json.dumps(weights), "beta": beta, "updated_at": now}
        stmt = self.db.insert(vas_profiles).values(tenant=tenant, user=user, **values)
        with self.db.write() as conn:
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[vas_profiles.c.tenant, vas_profiles.c.user], set_=values
            ))
        return Profile(dict(weights), beta, now)

    def delete(self, tenant: str, user: str) -> int:
        with self.db.write() as conn:
            return int(conn.execute(sa.delete(vas_profiles).where(_scope(tenant, user))).rowcount)

    def close(self) -> None:
        # A Database handed in belongs to the server's `Databases`, which closes it.
        if self._owns_db:
            self.db.close()
