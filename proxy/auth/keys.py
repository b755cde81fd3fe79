"""Proxy API keys: only SHA-256 hashes are stored; each key belongs to a tenant and may bind a user.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed), and lookups by
hash never compare secrets byte by byte in Python.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from proxy.settings import AuthSettings

KEY_PREFIX = "rk-"
CACHE_TTL_S = 5.0
CACHE_MAX_ENTRIES = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    tenant: str
    user: str | None
    created_at: float
    revoked: bool
    rate_limit_rps: float | None = None


class KeyStore:
    def __init__(self, path: Path, auth: AuthSettings, *, allow_open_mode: bool = True) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL,"
            " name TEXT NOT NULL, tenant TEXT NOT NULL, user TEXT, created_at REAL NOT NULL,"
            " revoked INTEGER NOT NULL DEFAULT 0, rate_limit_rps REAL)"
        )
        # Static keys from config live in memory only: they are never written to disk.
        self._static: dict[str, ApiKey] = {}
        for i, static in enumerate(auth.static_keys):
            digest = hash_key(static.key.get_secret_value())
            self._static[digest] = ApiKey(
                key_id=f"static-{i}",
                name=f"config key {i}",
                tenant=static.tenant,
                user=static.user,
                created_at=0.0,
                revoked=False,
                rate_limit_rps=static.rate_limit_rps,
            )
        admin = auth.admin_key.get_secret_value() if auth.admin_key else None
        self._admin_hash = hash_key(admin) if admin else None
        # Lookups are cached briefly: keys created or revoked by `rapport keys` in another process take
        # effect within the TTL without a query on every request.
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._any_keys: tuple[float, bool] | None = None
        self._open = allow_open_mode and not self.has_admin_key and not self.any_proxy_keys()

    # -- queries -------------------------------------------------------------------------------

    @property
    def open_mode(self) -> bool:
        """No key of any kind when this store opened: local development, any request accepted.

        Decided at start. It ends for good once a key exists (a key created while serving takes effect), but
        never begins while serving: revoking every key of a server that started with keys must not open it
        to anyone (it may be bound to a public address).
        """
        if self._open and self.any_proxy_keys():
            self._open = False
        return self._open

    @property
    def has_admin_key(self) -> bool:
        return self._admin_hash is not None

    def is_admin(self, presented: str) -> bool:
        if self._admin_hash is None:
            return False
        return hmac.compare_digest(hash_key(presented), self._admin_hash)

    def any_proxy_keys(self) -> bool:
        if self._static:
            return True
        now = time.monotonic()
        if self._any_keys is not None and now - self._any_keys[0] < CACHE_TTL_S:
            return self._any_keys[1]
        with self._lock:
            row = self._db.execute("SELECT 1 FROM api_keys WHERE revoked = 0 LIMIT 1").fetchone()
        self._any_keys = (now, row is not None)
        return row is not None

    def lookup(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        static = self._static.get(digest)
        if static is not None:
            return static
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_TTL_S:
            return cached[1]
        with self._lock:
            row = self._db.execute(
                "SELECT key_id, name, tenant, user, created_at, revoked, rate_limit_rps FROM api_keys"
                " WHERE key_hash = ?",
                (digest,),
            ).fetchone()
        found = None if row is None or row[5] else ApiKey(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()  # bounded: a flood of wrong keys cannot grow memory
        self._cache[digest] = (now, found)
        return found

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, name, tenant, user, created_at, revoked, rate_limit_rps FROM api_keys"
                " ORDER BY created_at"
            ).fetchall()
        return [ApiKey(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    # -- changes -------------------------------------------------------------------------------

    def create(
        self, name: str, tenant: str = "default", user: str | None = None, rate_limit_rps: float | None = None
    ) -> tuple[str, ApiKey]:
        """Create a key; the plain key is returned once and never stored."""
        plain = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            key_id="key-" + secrets.token_hex(6),
            name=name,
            tenant=tenant,
            user=user,
            created_at=time.time(),
            revoked=False,
            rate_limit_rps=rate_limit_rps,
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (key_id, key_hash, name, tenant, user, created_at, revoked, rate_limit_rps)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                (key.key_id, hash_key(plain), name, tenant, user, key.created_at, rate_limit_rps),
            )
        self._cache.clear()
        self._any_keys = None
        return plain, key

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ? AND revoked = 0", (key_id,))
        self._cache.clear()
        self._any_keys = None
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
