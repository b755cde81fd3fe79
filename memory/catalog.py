"""The memory catalog in SQLite: which users exist (counts, last seen) and their versioned summaries.

Synchronous; the memory service calls it from a worker thread. WAL + synchronous=FULL so a committed
write survives a crash.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    items INTEGER NOT NULL DEFAULT 0,
    since_summary INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (tenant, user)
);
CREATE TABLE IF NOT EXISTS summaries (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    task TEXT NOT NULL,
    version INTEGER NOT NULL,
    text TEXT NOT NULL,
    item_count INTEGER NOT NULL,
    model TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant, user, task, version)
);
"""


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


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        # Latest summary per (tenant, user, task), read on every request: kept in memory.
        self._latest: dict[tuple[str, str, str], Summary | None] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- users --------------------------------------------------------------------------------------

    def touch(self, tenant: str, user: str, added: int) -> UserRecord:
        now = time.time()
        with self._lock:
            row = self._conn.execute(
                "INSERT INTO users (tenant, user, items, since_summary, created_at, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, user) DO UPDATE SET"
                " items = items + excluded.items, since_summary = since_summary + excluded.since_summary,"
                " last_seen = excluded.last_seen RETURNING *",
                (tenant, user, added, added, now, now),
            ).fetchone()
        return UserRecord(**dict(row))

    def touch_many(self, added: dict[tuple[str, str], int]) -> list[UserRecord]:
        """`touch` for several users in one transaction (one WAL commit, not one per user)."""
        now = time.time()
        rows = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for (tenant, user), count in added.items():
                    rows.append(
                        self._conn.execute(
                            "INSERT INTO users (tenant, user, items, since_summary, created_at, last_seen)"
                            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, user) DO UPDATE SET"
                            " items = items + excluded.items,"
                            " since_summary = since_summary + excluded.since_summary,"
                            " last_seen = excluded.last_seen RETURNING *",
                            (tenant, user, count, count, now, now),
                        ).fetchone()
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return [UserRecord(**dict(row)) for row in rows]

    def set_count(self, tenant: str, user: str, items: int) -> None:
        with self._lock:
            self._conn.execute("UPDATE users SET items=? WHERE tenant=? AND user=?", (items, tenant, user))

    def reset_since_summary(self, tenant: str, user: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE users SET since_summary=0 WHERE tenant=? AND user=?", (tenant, user))

    def user(self, tenant: str, user: str) -> UserRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM users WHERE tenant=? AND user=?", (tenant, user)
            ).fetchone()
        return UserRecord(**dict(row)) if row else None

    def users(self, tenant: str | None, limit: int, offset: int) -> tuple[list[UserRecord], int]:
        where, args = ("WHERE tenant=?", [tenant]) if tenant is not None else ("", [])
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM users {where} ORDER BY last_seen DESC, user LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            total = self._conn.execute(f"SELECT COUNT(*) FROM users {where}", args).fetchone()[0]
        return [UserRecord(**dict(r)) for r in rows], int(total)

    # -- summaries ----------------------------------------------------------------------------------

    def add_summary(
        self, tenant: str, user: str, task: str, text: str, item_count: int, model: str | None
    ) -> Summary:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # Only a known user gets a summary: a user forgotten while the job ran stays forgotten.
                known = self._conn.execute(
                    "SELECT 1 FROM users WHERE tenant=? AND user=?", (tenant, user)
                ).fetchone()
                if known is None:
                    self._conn.execute("ROLLBACK")
                    raise LookupError(f"user {user!r} of tenant {tenant!r} does not exist")
                version = self._conn.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM summaries WHERE tenant=? AND user=? AND task=?",
                    (tenant, user, task),
                ).fetchone()[0]
                summary = Summary(tenant, user, task, int(version), text, item_count, model, time.time())
                self._conn.execute(
                    "INSERT INTO summaries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (tenant, user, task, summary.version, text, item_count, model, summary.created_at),
                )
                self._conn.execute("COMMIT")
            except LookupError:
                raise
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._latest[(tenant, user, task)] = summary
        return summary

    def latest_summary(self, tenant: str, user: str, task: str) -> Summary | None:
        key = (tenant, user, task)
        if key in self._latest:
            return self._latest[key]
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM summaries WHERE tenant=? AND user=? AND task=? ORDER BY version DESC LIMIT 1",
                key,
            ).fetchone()
            summary = Summary(**dict(row)) if row else None
            self._latest[key] = summary
        return summary

    def summaries(self, tenant: str, user: str, task: str | None = None) -> list[Summary]:
        where, args = "tenant=? AND user=?", [tenant, user]
        if task is not None:
            where += " AND task=?"
            args.append(task)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM summaries WHERE {where} ORDER BY task, version DESC", args
            ).fetchall()
        return [Summary(**dict(r)) for r in rows]

    def import_summary(self, summary: Summary) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    summary.tenant,
                    summary.user,
                    summary.task,
                    summary.version,
                    summary.text,
                    summary.item_count,
                    summary.model,
                    summary.created_at,
                ),
            )
            self._latest.pop((summary.tenant, summary.user, summary.task), None)

    # -- forget -------------------------------------------------------------------------------------

    def forget(self, tenant: str, user: str) -> dict[str, int]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            summaries = self._conn.execute(
                "DELETE FROM summaries WHERE tenant=? AND user=?", (tenant, user)
            ).rowcount
            users = self._conn.execute("DELETE FROM users WHERE tenant=? AND user=?", (tenant, user)).rowcount
            self._conn.execute("COMMIT")
            for key in [k for k in self._latest if k[0] == tenant and k[1] == user]:
                self._latest.pop(key, None)
        return {"summaries": summaries, "users": users}

    def raw_rows(self, tenant: str, user: str) -> int:
        """How many rows of any table still mention the user (for tests and audits)."""
        with self._lock:
            a = self._conn.execute(
                "SELECT COUNT(*) FROM users WHERE tenant=? AND user=?", (tenant, user)
            ).fetchone()[0]
            b = self._conn.execute(
                "SELECT COUNT(*) FROM summaries WHERE tenant=? AND user=?", (tenant, user)
            ).fetchone()[0]
        return int(a) + int(b)
