"""RPM's persistent store on a `Database`: the embedded SQLite file, or the PostgreSQL database replicas share.

Every row is scoped by (tenant, user); vectors are float32 blobs. Tables and migrations: reasoning/rpm/store_schema.py.
The methods are blocking; the engine and the admin API call them through `asyncio.to_thread`.

Each method is one transaction, so a replica reads what another committed, and a forget (history, features,
factors, paths and build progress) is one transaction on every backend. Rows derived from a user's history
(an entry's features or reasoning path; the user's factors and build progress) are written only while that
history exists, checked under a lock in the same transaction; a forget or an entry's delete removes the
entries first, so it waits for such a write to commit and then removes what it wrote. A build that races a
forget, on any replica, leaves nothing of the user behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from rapport.core.database import Database
from rapport.core.migrations import open_store
from rapport.core.userdata import user_digest
from reasoning.rpm.models import Factor, FactorStats, Feature, HistoryEntry, ReasoningPath, StoredFeature
from reasoning.rpm.store_schema import FORGETS, SCHEMA, TABLES

_FEATURE_COLUMNS = ("id", "entry_id", "name", "value", "evidence", "extractor", "factor_id")


def _blob(vec: np.ndarray | None) -> bytes | None:
    return None if vec is None else np.asarray(vec, dtype=np.float32).tobytes()


def _vec(blob: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(blob), dtype=np.float32)


def _stack(blobs: list[Any]) -> np.ndarray:
    return np.stack([_vec(b) for b in blobs])


def _feature(row: RowMapping) -> StoredFeature:
    return StoredFeature(**{name: row[name] for name in _FEATURE_COLUMNS})


class RPMStore:
    def __init__(self, database: Database | Path | str, *, migrate: bool = True) -> None:
        # A path is the embedded convenience for tools, benches and tests: the store then owns that SQLite file.
        self.db, self._owns_db = open_store(database, SCHEMA, migrate=migrate)
        t = TABLES[self.db.dialect]
        self._entries, self._features, self._factors, self._paths, self._builds = (
            t.entries, t.features, t.factors, t.paths, t.builds,
        )
        self._issued = t.issued
        self._forgets = FORGETS[self.db.dialect]

    def close(self) -> None:
        # A Database handed in belongs to the server's `Databases`, which closes it.
        if self._owns_db:
            self.db.close()

    def _scope(self, table: sa.Table, tenant: str, user: str) -> sa.ColumnElement[bool]:
        return sa.and_(table.c.tenant == tenant, table.c.user == user)

    def _has_history(self, conn: Connection, tenant: str, user: str, entry_id: int | None = None) -> bool:
        """Whether the entry (or any entry of the user) is there, locking the row found until the transaction
        ends (PostgreSQL: a delete of it on another replica waits for this transaction; SQLite: the write
        transaction already holds the file's only write lock)."""
        e = self._entries
        query = sa.select(e.c.id).where(self._scope(e, tenant, user))
        if entry_id is not None:
            query = query.where(e.c.id == entry_id)
        return conn.execute(query.limit(1).with_for_update(key_share=True)).first() is not None

    # -- history -----------------------------------------------------------------------------------
    def add_entries(
        self, tenant: str, user: str, items: list[tuple[str, str, str | None]], source: str
    ) -> list[int]:
        with self.db.write() as conn:
            return self.insert_entries(conn, tenant, user, items, source, time.time())

    def insert_entries(
        self, conn: Connection, tenant: str, user: str, items: list[tuple[str, str, str | None]], source: str,
        now: float,
    ) -> list[int]:
        """Pending history entries, inside the caller's transaction (feedback replaces entries in the same one)."""
        e = self._entries
        return [
            int(
                conn.execute(
                    sa.insert(e)
                    .values(tenant=tenant, user=user, input=text, response=response, task=task, source=source,
                            status="pending", created_at=now)
                    .returning(e.c.id)
                ).scalar_one()
            )
            for text, response, task in items
        ]

    def entry_ids(self, tenant: str, user: str, status: str | None = None) -> list[int]:
        e = self._entries
        query = sa.select(e.c.id).where(self._scope(e, tenant, user))
        if status is not None:
            query = query.where(e.c.status == status)
        with self.db.read() as conn:
            return [int(i) for i in conn.execute(query.order_by(e.c.id)).scalars()]

    def entries(
        self, tenant: str, user: str, *, ids: list[int] | None = None, limit: int = 1000, offset: int = 0,
        details: bool = False,
    ) -> list[HistoryEntry]:
        e = self._entries
        query = sa.select(e).where(self._scope(e, tenant, user)).order_by(e.c.id)
        if ids is not None:
            if not ids:
                return []
            query = query.where(e.c.id.in_(ids))
        else:
            query = query.limit(limit).offset(offset)
        with self.db.read() as conn:
            rows = conn.execute(query).mappings().all()
        out = [
            HistoryEntry(
                id=r["id"], input=r["input"], response=r["response"], task=r["task"], source=r["source"],
                status=r["status"], skip_reason=r["skip_reason"], created_at=r["created_at"],
            )
            for r in rows
        ]
        if details and out:
            by_id = {entry.id: entry for entry in out}
            for feature in self.features(tenant, user, entry_ids=list(by_id)):
                by_id[feature.entry_id].features.append(feature)
            for path in self.paths(tenant, user, entry_ids=list(by_id)):
                by_id[path.entry_id].reasoning = path
        return out

    def count_entries(self, tenant: str, user: str) -> dict[str, int]:
        e = self._entries
        query = sa.select(e.c.status, sa.func.count()).where(self._scope(e, tenant, user)).group_by(e.c.status)
        with self.db.read() as conn:
            return {status: int(n) for status, n in conn.execute(query)}

    def set_status(self, tenant: str, user: str, entry_id: int, status: str, reason: str | None = None) -> None:
        e = self._entries
        with self.db.write() as conn:
            conn.execute(
                sa.update(e)
                .where(e.c.id == entry_id, self._scope(e, tenant, user))
                .values(status=status, skip_reason=sa.func.coalesce(reason, e.c.skip_reason))
            )

    def set_input_vec(self, tenant: str, user: str, entry_id: int, vec: np.ndarray) -> None:
        e = self._entries
        with self.db.write() as conn:
            conn.execute(
                sa.update(e).where(e.c.id == entry_id, self._scope(e, tenant, user)).values(input_vec=_blob(vec))
            )

    def input_vectors(self, tenant: str, user: str, task: str | None = None) -> tuple[list[int], np.ndarray]:
        e = self._entries
        query = sa.select(e.c.id, e.c.input_vec).where(self._scope(e, tenant, user), e.c.input_vec.is_not(None))
        if task is not None:
            query = query.where(e.c.task == task)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(e.c.id)).all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [int(r.id) for r in rows], _stack([r.input_vec for r in rows])

    def delete_entry(self, tenant: str, user: str, entry_id: int) -> bool:
        """Delete one entry with its features and reasoning path (explicitly: SQLite does not enforce the
        schema's ON DELETE CASCADE unless every connection turns foreign keys on)."""
        e, f, p = self._entries, self._features, self._paths
        with self.db.write() as conn:
            # The entry first: a feature or path write holding it commits before this goes on.
            if not conn.execute(sa.delete(e).where(e.c.id == entry_id, self._scope(e, tenant, user))).rowcount:
                return False
            conn.execute(sa.delete(f).where(f.c.entry_id == entry_id, self._scope(f, tenant, user)))
            conn.execute(sa.delete(p).where(p.c.entry_id == entry_id, self._scope(p, tenant, user)))
            return True

    def reset_user(self, tenant: str, user: str) -> None:
        """Drop everything derived (features, factors, paths) and mark the history pending again."""
        e = self._entries
        with self.db.write() as conn:
            for table in (self._features, self._factors, self._paths):
                conn.execute(sa.delete(table).where(self._scope(table, tenant, user)))
            conn.execute(sa.update(e).where(self._scope(e, tenant, user)).values(status="pending", skip_reason=None))

    def forget_user(self, tenant: str, user: str) -> int:
        """Everything of the user, in one transaction; returns the number of history entries removed."""
        with self.db.write() as conn:
            # First: a response being remembered for a request that began before this forget then writes
            # nothing (reasoning/rpm/feedback_store.py reads this row in its own write transaction).
            self._bump_generation(conn, tenant, user)
            # The issued responses before the entries: a feedback being applied holds its issued row, then writes
            # entries (reasoning/rpm/feedback_store.py), so it commits before this deletes what it wrote.
            conn.execute(sa.delete(self._issued).where(self._scope(self._issued, tenant, user)))
            # The entries first: a derived write holding one of them commits before the rest is deleted.
            removed = int(conn.execute(sa.delete(self._entries).where(self._scope(self._entries, tenant, user))).rowcount)
            for table in (self._features, self._factors, self._paths, self._builds):
                conn.execute(sa.delete(table).where(self._scope(table, tenant, user)))
            return removed

    def _bump_generation(self, conn: Connection, tenant: str, user: str) -> None:
        g = self._forgets
        stmt = self.db.insert(g).values(user_key=user_digest(tenant, user), generation=1)
        conn.execute(stmt.on_conflict_do_update(index_elements=[g.c.user_key], set_={"generation": g.c.generation + 1}))

    def users(self, tenant: str) -> list[str]:
        e = self._entries
        with self.db.read() as conn:
            return list(conn.execute(sa.select(e.c.user).where(e.c.tenant == tenant).distinct().order_by(e.c.user))
                        .scalars())

    # -- features ----------------------------------------------------------------------------------
    def add_features(
        self, tenant: str, user: str, entry_id: int, features: list[Feature], extractor: str,
        name_vecs: np.ndarray, feat_vecs: np.ndarray,
    ) -> None:
        """Replace an entry's features; nothing is written when the entry is gone (deleted or forgotten)."""
        f = self._features
        rows = [
            {"entry_id": entry_id, "tenant": tenant, "user": user, "name": feat.name, "value": feat.value,
             "evidence": feat.evidence, "extractor": extractor, "name_vec": _blob(nv), "feat_vec": _blob(fv)}
            for feat, nv, fv in zip(features, name_vecs, feat_vecs, strict=True)
        ]
        with self.db.write() as conn:
            if not self._has_history(conn, tenant, user, entry_id):
                return
            conn.execute(sa.delete(f).where(f.c.entry_id == entry_id, self._scope(f, tenant, user)))
            if rows:
                conn.execute(sa.insert(f), rows)

    def features(
        self, tenant: str, user: str, *, entry_ids: list[int] | None = None, factor_id: int | None = None
    ) -> list[StoredFeature]:
        f = self._features
        query = sa.select(*(f.c[name] for name in _FEATURE_COLUMNS)).where(self._scope(f, tenant, user))
        if entry_ids is not None:
            if not entry_ids:
                return []
            query = query.where(f.c.entry_id.in_(entry_ids))
        if factor_id is not None:
            query = query.where(f.c.factor_id == factor_id)
        with self.db.read() as conn:
            return [_feature(r) for r in conn.execute(query.order_by(f.c.entry_id, f.c.id)).mappings()]

    def feature_vectors(self, tenant: str, user: str) -> tuple[list[StoredFeature], np.ndarray, np.ndarray]:
        """All of a user's features with their name vectors and name+value vectors."""
        f = self._features
        query = (
            sa.select(*(f.c[name] for name in _FEATURE_COLUMNS), f.c.name_vec, f.c.feat_vec)
            .where(self._scope(f, tenant, user))
            .order_by(f.c.entry_id, f.c.id)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).mappings().all()
        if not rows:
            empty = np.zeros((0, 0), dtype=np.float32)
            return [], empty, empty
        names = _stack([r["name_vec"] for r in rows])
        values = _stack([r["feat_vec"] for r in rows])
        return [_feature(r) for r in rows], names, values

    # -- factors -----------------------------------------------------------------------------------
    def replace_factors(
        self, tenant: str, user: str, factors: list[tuple[str, list[str], FactorStats, np.ndarray, list[int]]]
    ) -> list[int]:
        """Swap in a freshly clustered set of factors; each tuple carries its member feature ids. A user
        without history (forgotten meanwhile) gets none."""
        fa, f = self._factors, self._features
        ids: list[int] = []
        with self.db.write() as conn:
            conn.execute(sa.delete(fa).where(self._scope(fa, tenant, user)))
            conn.execute(sa.update(f).where(self._scope(f, tenant, user)).values(factor_id=None))
            if not self._has_history(conn, tenant, user):
                return ids
            for name, members, stats, centroid, feature_ids in factors:
                fid = int(
                    conn.execute(
                        sa.insert(fa)
                        .values(tenant=tenant, user=user, name=name, members=json.dumps(members),
                                stats=stats.model_dump_json(), centroid=_blob(centroid))
                        .returning(fa.c.id)
                    ).scalar_one()
                )
                ids.append(fid)
                if feature_ids:
                    conn.execute(
                        sa.update(f).where(f.c.id.in_(feature_ids), self._scope(f, tenant, user)).values(factor_id=fid)
                    )
        return ids

    def factors(self, tenant: str, user: str) -> list[Factor]:
        fa = self._factors
        query = sa.select(fa.c.id, fa.c.name, fa.c.members, fa.c.stats).where(self._scope(fa, tenant, user))
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(fa.c.id)).all()
        return [
            Factor(id=r.id, name=r.name, members=json.loads(r.members), stats=FactorStats.model_validate_json(r.stats))
            for r in rows
        ]

    def factor_centroids(self, tenant: str, user: str) -> tuple[list[int], np.ndarray]:
        fa = self._factors
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(fa.c.id, fa.c.centroid).where(self._scope(fa, tenant, user)).order_by(fa.c.id)
            ).all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [int(r.id) for r in rows], _stack([r.centroid for r in rows])

    def delete_factor(self, tenant: str, user: str, factor_id: int) -> bool:
        fa, f = self._factors, self._features
        with self.db.write() as conn:
            conn.execute(
                sa.update(f).where(f.c.factor_id == factor_id, self._scope(f, tenant, user)).values(factor_id=None)
            )
            result = conn.execute(sa.delete(fa).where(fa.c.id == factor_id, self._scope(fa, tenant, user)))
            return bool(result.rowcount)

    # -- reasoning paths ---------------------------------------------------------------------------
    def set_path(self, tenant: str, user: str, entry_id: int, text: str, source: str, vec: np.ndarray | None) -> None:
        """Write (or replace) an entry's reasoning path; nothing is written when the entry is gone."""
        p = self._paths
        values = {"entry_id": entry_id, "tenant": tenant, "user": user, "text": text, "source": source,
                  "vec": _blob(vec)}
        with self.db.write() as conn:
            if not self._has_history(conn, tenant, user, entry_id):
                return
            stmt = self.db.insert(p).values(**values)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[p.c.entry_id],
                set_={name: stmt.excluded[name] for name in ("tenant", "user", "text", "source", "vec")},
            ))

    def paths(self, tenant: str, user: str, *, entry_ids: list[int] | None = None) -> list[ReasoningPath]:
        p = self._paths
        query = sa.select(p.c.entry_id, p.c.text, p.c.source).where(self._scope(p, tenant, user))
        if entry_ids is not None:
            if not entry_ids:
                return []
            query = query.where(p.c.entry_id.in_(entry_ids))
        with self.db.read() as conn:
            return [ReasoningPath(**dict(r)) for r in conn.execute(query.order_by(p.c.entry_id)).mappings()]

    def delete_path(self, tenant: str, user: str, entry_id: int) -> bool:
        p, e = self._paths, self._entries
        with self.db.write() as conn:
            result = conn.execute(sa.delete(p).where(p.c.entry_id == entry_id, self._scope(p, tenant, user)))
            if not result.rowcount:
                return False
            # The entry needs a new path on the next build.
            conn.execute(
                sa.update(e)
                .where(e.c.id == entry_id, self._scope(e, tenant, user), e.c.status == "done")
                .values(status="extracted")
            )
            return True

    # -- build progress ----------------------------------------------------------------------------
    def set_build(self, tenant: str, user: str, state: str, done: int, total: int, message: str | None = None) -> None:
        """Record a user's build progress; not for a user without history (forgotten while the build ran)."""
        b = self._builds
        values = {"state": state, "done": done, "total": total, "message": message, "updated_at": time.time()}
        stmt = self.db.insert(b).values(tenant=tenant, user=user, **values)
        with self.db.write() as conn:
            if not self._has_history(conn, tenant, user):
                return
            conn.execute(stmt.on_conflict_do_update(index_elements=[b.c.tenant, b.c.user], set_=values))

    def build(self, tenant: str, user: str) -> dict[str, Any] | None:
        b = self._builds
        query = sa.select(b.c.state, b.c.done, b.c.total, b.c.message, b.c.updated_at).where(self._scope(b, tenant, user))
        with self.db.read() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row is not None else None
