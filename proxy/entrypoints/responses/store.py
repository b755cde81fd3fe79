"""Stored responses: what `previous_response_id` continues from and `GET /v1/responses/{id}` returns.

Rapport owns the ids and the conversation state, scoped by (tenant, user): the same id asked for by another
tenant or user does not exist for them. Rows older than the retention are not returned and are purged as new
ones are written. Behind `ResponseStore` so that the shared-state backend can replace the embedded SQLite.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

# Anonymous requests (no user named) keep their responses under this user key, per tenant.
ANONYMOUS = ""


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


class SQLiteResponseStore:
    def __init__(self, path: Path, retention_s: float) -> None:
        self._retention_s = retention_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (id TEXT NOT NULL, tenant TEXT NOT NULL, user TEXT NOT NULL,"
            " created_at REAL NOT NULL, response BLOB NOT NULL, history BLOB NOT NULL,"
            " PRIMARY KEY (tenant, user, id))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at)")

    def _cutoff(self) -> float:
        return time.time() - self._retention_s

    def save(self, stored: StoredResponse) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (id, tenant, user, created_at, response, history)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (stored.id, stored.tenant, stored.user, stored.created_at, orjson.dumps(stored.response), orjson.dumps(stored.history)),
            )
            # Retention is enforced as rows are written, in small steps, so no sweep ever holds the lock long.
            self._db.execute(
                "DELETE FROM responses WHERE rowid IN (SELECT rowid FROM responses WHERE created_at < ? LIMIT 100)",
                (self._cutoff(),),
            )

    def get(self, tenant: str, user: str, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, tenant, user, created_at, response, history FROM responses"
                " WHERE tenant = ? AND user = ? AND id = ? AND created_at >= ?",
                (tenant, user, response_id, self._cutoff()),
            ).fetchone()
        return _row(row) if row else None

    def delete(self, tenant: str, user: str, response_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM responses WHERE tenant = ? AND user = ? AND id = ?", (tenant, user, response_id)
            )
        return cur.rowcount > 0

    def forget_user(self, tenant: str, user: str) -> int:
        with self._lock:
            cur = self._db.execute("DELETE FROM responses WHERE tenant = ? AND user = ?", (tenant, user))
        return cur.rowcount

    def export_user(self, tenant: str, user: str) -> list[StoredResponse]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, tenant, user, created_at, response, history FROM responses"
                " WHERE tenant = ? AND user = ? AND created_at >= ? ORDER BY created_at",
                (tenant, user, self._cutoff()),
            ).fetchall()
        return [_row(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(row: tuple[Any, ...]) -> StoredResponse:
    return StoredResponse(row[0], row[1], row[2], row[3], orjson.loads(row[4]), orjson.loads(row[5]))
