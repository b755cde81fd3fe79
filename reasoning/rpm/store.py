"""RPM's persistent store: one SQLite file; vectors as float32 blobs. Every row is scoped by (tenant, user).

The methods are blocking; the engine calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from reasoning.rpm.models import Factor, FactorStats, Feature, HistoryEntry, ReasoningPath, StoredFeature

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, user TEXT NOT NULL,
    input TEXT NOT NULL, response TEXT NOT NULL, task TEXT, source TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', skip_reason TEXT, created_at REAL NOT NULL, input_vec BLOB);
CREATE INDEX IF NOT EXISTS entries_user ON entries(tenant, user, status);
CREATE TABLE IF NOT EXISTS features (
    id INTEGER PRIMARY KEY AUTOINCREMENT, entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    tenant TEXT NOT NULL, user TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, evidence TEXT NOT NULL,
    extractor TEXT NOT NULL, factor_id INTEGER, name_vec BLOB NOT NULL, feat_vec BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS features_user ON features(tenant, user);
CREATE INDEX IF NOT EXISTS features_entry ON features(entry_id);
CREATE TABLE IF NOT EXISTS factors (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, user TEXT NOT NULL, name TEXT NOT NULL,
    members TEXT NOT NULL, stats TEXT NOT NULL, centroid BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS factors_user ON factors(tenant, user);
CREATE TABLE IF NOT EXISTS paths (
    entry_id INTEGER PRIMARY KEY REFERENCES entries(id) ON DELETE CASCADE, tenant TEXT NOT NULL,
    user TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL, vec BLOB);
CREATE TABLE IF NOT EXISTS builds (
    tenant TEXT NOT NULL, user TEXT NOT NULL, state TEXT NOT NULL, done INTEGER NOT NULL, total INTEGER NOT NULL,
    message TEXT, updated_at REAL NOT NULL, PRIMARY KEY (tenant, user));
"""


def _blob(vec: np.ndarray | None) -> bytes | None:
    return None if vec is None else np.asarray(vec, dtype=np.float32).tobytes()


def _vec(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float32)


class RPMStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- history -----------------------------------------------------------------------------------
    def add_entries(
        self, tenant: str, user: str, items: list[tuple[str, str, str | None]], source: str
    ) -> list[int]:
        ids: list[int] = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for text, response, task in items:
                    cur = self._db.execute(
                        "INSERT INTO entries(tenant,user,input,response,task,source,created_at) VALUES (?,?,?,?,?,?,?)",
                        (tenant, user, text, response, task, source, now),
                    )
                    ids.append(int(cur.lastrowid or 0))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def entry_ids(self, tenant: str, user: str, status: str | None = None) -> list[int]:
        if status is None:
            rows = self._q("SELECT id FROM entries WHERE tenant=? AND user=? ORDER BY id", (tenant, user))
        else:
            rows = self._q(
                "SELECT id FROM entries WHERE tenant=? AND user=? AND status=? ORDER BY id", (tenant, user, status)
            )
        return [int(r["id"]) for r in rows]

    def entries(
        self, tenant: str, user: str, *, ids: list[int] | None = None, limit: int = 1000, offset: int = 0,
        details: bool = False,
    ) -> list[HistoryEntry]:
        if ids is not None:
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = self._q(
                f"SELECT * FROM entries WHERE tenant=? AND user=? AND id IN ({marks}) ORDER BY id",
                (tenant, user, *ids),
            )
        else:
            rows = self._q(
                "SELECT * FROM entries WHERE tenant=? AND user=? ORDER BY id LIMIT ? OFFSET ?",
                (tenant, user, limit, offset),
            )
        out = [
            HistoryEntry(
                id=r["id"], input=r["input"], response=r["response"], task=r["task"], source=r["source"],
                status=r["status"], skip_reason=r["skip_reason"], created_at=r["created_at"],
            )
            for r in rows
        ]
        if details and out:
            by_id = {e.id: e for e in out}
            for feature in self.features(tenant, user, entry_ids=list(by_id)):
                by_id[feature.entry_id].features.append(feature)
            for path in self.paths(tenant, user, entry_ids=list(by_id)):
                by_id[path.entry_id].reasoning = path
        return out

    def count_entries(self, tenant: str, user: str) -> dict[str, int]:
        rows = self._q(
            "SELECT status, COUNT(*) AS n FROM entries WHERE tenant=? AND user=? GROUP BY status", (tenant, user)
        )
        return {r["status"]: int(r["n"]) for r in rows}

    def set_status(self, tenant: str, user: str, entry_id: int, status: str, reason: str | None = None) -> None:
        self._q(
            "UPDATE entries SET status=?, skip_reason=COALESCE(?, skip_reason) WHERE id=? AND tenant=? AND user=?",
            (status, reason, entry_id, tenant, user),
        )

    def set_input_vec(self, tenant: str, user: str, entry_id: int, vec: np.ndarray) -> None:
        self._q("UPDATE entries SET input_vec=? WHERE id=? AND tenant=? AND user=?", (_blob(vec), entry_id, tenant, user))

    def input_vectors(self, tenant: str, user: str, task: str | None = None) -> tuple[list[int], np.ndarray]:
        sql = "SELECT id, input_vec FROM entries WHERE tenant=? AND user=? AND input_vec IS NOT NULL"
        args: tuple[Any, ...] = (tenant, user)
        if task is not None:
            sql, args = sql + " AND task=?", (*args, task)
        rows = self._q(sql + " ORDER BY id", args)
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [int(r["id"]) for r in rows], np.stack([_vec(r["input_vec"]) for r in rows])  # type: ignore[misc]

    def delete_entry(self, tenant: str, user: str, entry_id: int) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM entries WHERE id=? AND tenant=? AND user=?", (entry_id, tenant, user))
            return cur.rowcount > 0

    def reset_user(self, tenant: str, user: str) -> None:
        """Drop everything derived (features, factors, paths) and mark the history pending again."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM features WHERE tenant=? AND user=?", (tenant, user))
            self._db.execute("DELETE FROM factors WHERE tenant=? AND user=?", (tenant, user))
            self._db.execute("DELETE FROM paths WHERE tenant=? AND user=?", (tenant, user))
            self._db.execute(
                "UPDATE entries SET status='pending', skip_reason=NULL WHERE tenant=? AND user=?", (tenant, user)
            )
            self._db.execute("COMMIT")

    def forget_user(self, tenant: str, user: str) -> int:
        with self._lock:
            self._db.execute("BEGIN")
            for table in ("features", "factors", "paths", "builds"):
                self._db.execute(f"DELETE FROM {table} WHERE tenant=? AND user=?", (tenant, user))
            cur = self._db.execute("DELETE FROM entries WHERE tenant=? AND user=?", (tenant, user))
            self._db.execute("COMMIT")
            return cur.rowcount

    def users(self, tenant: str) -> list[str]:
        return [r["user"] for r in self._q("SELECT DISTINCT user FROM entries WHERE tenant=? ORDER BY user", (tenant,))]

    # -- features ----------------------------------------------------------------------------------
    def add_features(
        self, tenant: str, user: str, entry_id: int, features: list[Feature], extractor: str,
        name_vecs: np.ndarray, feat_vecs: np.ndarray,
    ) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM features WHERE entry_id=? AND tenant=? AND user=?", (entry_id, tenant, user))
            for f, nv, fv in zip(features, name_vecs, feat_vecs, strict=True):
                self._db.execute(
                    "INSERT INTO features(entry_id,tenant,user,name,value,evidence,extractor,name_vec,feat_vec)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (entry_id, tenant, user, f.name, f.value, f.evidence, extractor, _blob(nv), _blob(fv)),
                )
            self._db.execute("COMMIT")

    def features(
        self, tenant: str, user: str, *, entry_ids: list[int] | None = None, factor_id: int | None = None
    ) -> list[StoredFeature]:
        sql = "SELECT id,entry_id,name,value,evidence,extractor,factor_id FROM features WHERE tenant=? AND user=?"
        args: tuple[Any, ...] = (tenant, user)
        if entry_ids is not None:
            if not entry_ids:
                return []
            sql += f" AND entry_id IN ({','.join('?' * len(entry_ids))})"
            args = (*args, *entry_ids)
        if factor_id is not None:
            sql, args = sql + " AND factor_id=?", (*args, factor_id)
        return [StoredFeature(**dict(r)) for r in self._q(sql + " ORDER BY entry_id, id", args)]

    def feature_vectors(self, tenant: str, user: str) -> tuple[list[StoredFeature], np.ndarray, np.ndarray]:
        """All of a user's features with their name vectors and name+value vectors."""
        rows = self._q(
            "SELECT id,entry_id,name,value,evidence,extractor,factor_id,name_vec,feat_vec FROM features"
            " WHERE tenant=? AND user=? ORDER BY entry_id, id",
            (tenant, user),
        )
        if not rows:
            empty = np.zeros((0, 0), dtype=np.float32)
            return [], empty, empty
        feats = [
            StoredFeature(
                id=r["id"], entry_id=r["entry_id"], name=r["name"], value=r["value"], evidence=r["evidence"],
                extractor=r["extractor"], factor_id=r["factor_id"],
            )
            for r in rows
        ]
        names = np.stack([_vec(r["name_vec"]) for r in rows])  # type: ignore[misc]
        values = np.stack([_vec(r["feat_vec"]) for r in rows])  # type: ignore[misc]
        return feats, names, values

    # -- factors -----------------------------------------------------------------------------------
    def replace_factors(
        self, tenant: str, user: str, factors: list[tuple[str, list[str], FactorStats, np.ndarray, list[int]]]
    ) -> list[int]:
        """Swap in a freshly clustered set of factors; each tuple carries its member feature ids."""
        ids: list[int] = []
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM factors WHERE tenant=? AND user=?", (tenant, user))
            self._db.execute("UPDATE features SET factor_id=NULL WHERE tenant=? AND user=?", (tenant, user))
            for name, members, stats, centroid, feature_ids in factors:
                cur = self._db.execute(
                    "INSERT INTO factors(tenant,user,name,members,stats,centroid) VALUES (?,?,?,?,?,?)",
                    (tenant, user, name, json.dumps(members), stats.model_dump_json(), _blob(centroid)),
                )
                fid = int(cur.lastrowid or 0)
                ids.append(fid)
                self._db.executemany(
                    "UPDATE features SET factor_id=? WHERE id=? AND tenant=? AND user=?",
                    [(fid, i, tenant, user) for i in feature_ids],
                )
            self._db.execute("COMMIT")
        return ids

    def factors(self, tenant: str, user: str) -> list[Factor]:
        rows = self._q("SELECT id,name,members,stats FROM factors WHERE tenant=? AND user=? ORDER BY id", (tenant, user))
        return [
            Factor(id=r["id"], name=r["name"], members=json.loads(r["members"]),
                   stats=FactorStats.model_validate_json(r["stats"]))
            for r in rows
        ]

    def factor_centroids(self, tenant: str, user: str) -> tuple[list[int], np.ndarray]:
        rows = self._q("SELECT id, centroid FROM factors WHERE tenant=? AND user=? ORDER BY id", (tenant, user))
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [int(r["id"]) for r in rows], np.stack([_vec(r["centroid"]) for r in rows])  # type: ignore[misc]

    def delete_factor(self, tenant: str, user: str, factor_id: int) -> bool:
        with self._lock:
            self._db.execute(
                "UPDATE features SET factor_id=NULL WHERE factor_id=? AND tenant=? AND user=?", (factor_id, tenant, user)
            )
            cur = self._db.execute("DELETE FROM factors WHERE id=? AND tenant=? AND user=?", (factor_id, tenant, user))
            return cur.rowcount > 0

    # -- reasoning paths ---------------------------------------------------------------------------
    def set_path(self, tenant: str, user: str, entry_id: int, text: str, source: str, vec: np.ndarray | None) -> None:
        self._q(
            "INSERT OR REPLACE INTO paths(entry_id,tenant,user,text,source,vec) VALUES (?,?,?,?,?,?)",
            (entry_id, tenant, user, text, source, _blob(vec)),
        )

    def paths(self, tenant: str, user: str, *, entry_ids: list[int] | None = None) -> list[ReasoningPath]:
        sql, args = "SELECT entry_id,text,source FROM paths WHERE tenant=? AND user=?", (tenant, user)
        if entry_ids is not None:
            if not entry_ids:
                return []
            sql += f" AND entry_id IN ({','.join('?' * len(entry_ids))})"
            args = (*args, *entry_ids)  # type: ignore[assignment]
        return [ReasoningPath(**dict(r)) for r in self._q(sql + " ORDER BY entry_id", args)]

    def delete_path(self, tenant: str, user: str, entry_id: int) -> bool:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM paths WHERE entry_id=? AND tenant=? AND user=?", (entry_id, tenant, user)
            )
            if cur.rowcount:
                # The entry needs a new path on the next build.
                self._db.execute(
                    "UPDATE entries SET status='extracted' WHERE id=? AND status='done'", (entry_id,)
                )
            return cur.rowcount > 0

    # -- build progress ----------------------------------------------------------------------------
    def set_build(self, tenant: str, user: str, state: str, done: int, total: int, message: str | None = None) -> None:
        self._q(
            "INSERT OR REPLACE INTO builds(tenant,user,state,done,total,message,updated_at) VALUES (?,?,?,?,?,?,?)",
            (tenant, user, state, done, total, message, time.time()),
        )

    def build(self, tenant: str, user: str) -> dict[str, Any] | None:
        rows = self._q("SELECT state,done,total,message,updated_at FROM builds WHERE tenant=? AND user=?", (tenant, user))
        return dict(rows[0]) if rows else None
