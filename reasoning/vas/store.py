"""Per-user value-model weights (the VAS part of a user's profile), scoped by (tenant, user), in SQLite."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vas_profiles (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    weights TEXT NOT NULL,
    beta REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, user)
);
"""


class Profile:
    __slots__ = ("beta", "updated_at", "weights")

    def __init__(self, weights: dict[str, float], beta: float | None, updated_at: float) -> None:
        self.weights = weights
        self.beta = beta
        self.updated_at = updated_at


class ProfileStore:
    """Blocking calls; the proxy runs them off the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)

    def get(self, tenant: str, user: str) -> Profile | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT weights, beta, updated_at FROM vas_profiles WHERE tenant = ? AND user = ?", (tenant, user)
            ).fetchone()
        if row is None:
            return None
        return Profile({k: float(v) for k, v in json.loads(row[0]).items()}, row[1], row[2])

    def put(self, tenant: str, user: str, weights: dict[str, float], beta: float | None) -> Profile:
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT INTO vas_profiles (tenant, user, weights, beta, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, user) DO UPDATE SET weights = excluded.weights, beta = excluded.beta, "
                "updated_at = excluded.updated_at",
                (tenant, user, json.dumps(weights), beta, now),
            )
        return Profile(dict(weights), beta, now)

    def delete(self, tenant: str, user: str) -> int:
        with self._lock:
            cur = self._conn.execute("DELETE FROM vas_profiles WHERE tenant = ? AND user = ?", (tenant, user))
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
