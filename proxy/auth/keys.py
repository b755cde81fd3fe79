"""Proxy API keys: only SHA-256 hashes are stored; each key belongs to a tenant and may bind a user.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed), and lookups by
hash never compare secrets byte by byte in Python.

The keys live in the `api_keys` table (proxy/auth/key_schema.py) of the store's `Database`: the embedded
`keys.sqlite3` under the data dir, or the shared PostgreSQL database that every replica reads. Lookups are
cached for `cache_ttl_s` (5 s by default) per process, so a key created or revoked on one replica (or by
`rapport keys` in another process) takes effect on every other replica within that TTL, without a query on
every request. Errors of the database are raised as they are: the auth dependency answers them with a 503,
never with an unauthenticated pass.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Row

from proxy.auth.key_schema import SCHEMA, api_keys
from proxy.settings import AuthSettings
from rapport.core.database import Database
from rapport.core.migrations import open_store

KEY_PREFIX = "rk-"
CACHE_TTL_S = 5.0
CACHE_MAX_ENTRIES = 10_000

_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.name,
    api_keys.c.tenant,
    api_keys.c.user,
    api_keys.c.created_at,
    api_keys.c.revoked,
    api_keys.c.rate_limit_rps,
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def static_key_id(digest: str) -> str:
    """The id of a config key: a prefix of its hash (safe to show: a hash of a 256-bit token)."""
    return f"static-{digest[:12]}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    tenant: str
    user: str | None
    created_at: float
    revoked: bool
    rate_limit_rps: float | None = None


def _to_key(row: Row[tuple[str, str, str, str | None, float, int, float | None]]) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        tenant=row.tenant,
        user=row.user,
        created_at=float(row.created_at),
        revoked=bool(row.revoked),
        rate_limit_rps=None if row.rate_limit_rps is None else float(row.rate_limit_rps),
    )


class KeyStore:
    def __init__(
        self,
        database: Database | Path | str,
        auth: AuthSettings,
        *,
        allow_open_mode: bool = True,
        cache_ttl_s: float = CACHE_TTL_S,
        migrate: bool = True,
    ) -> None:
        self._db, self._owns_db = open_store(database, SCHEMA, migrate=migrate)
        self._ttl = cache_ttl_s
        self._cache_lock = threading.Lock()
        # Static keys from config live in memory only: they are never written to disk.
        self._static: dict[str, ApiKey] = {}
        for i, static in enumerate(auth.static_keys):
            digest = hash_key(static.key.get_secret_value())
            self._static[digest] = ApiKey(
                # Named by the key's hash, not its place in the list: replicas sharing limits (Redis buckets
                # are per key id) must give one key one id whatever order their configs list keys in.
                key_id=static_key_id(digest),
                name=f"config key {i}",
                tenant=static.tenant,
                user=static.user,
                created_at=0.0,
                revoked=False,
                rate_limit_rps=static.rate_limit_rps,
            )
        admin = auth.admin_key.get_secret_value() if auth.admin_key else None
        self._admin_hash = hash_key(admin) if admin else None
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
        cached = self._any_keys
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        with self._db.read() as conn:
            row = conn.execute(sa.select(sa.literal(1)).where(api_keys.c.revoked == 0).limit(1)).first()
        self._any_keys = (now, row is not None)
        return row is not None

    def lookup(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        static = self._static.get(digest)
        if static is not None:
            return static
        now = time.monotonic()
        with self._cache_lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        with self._db.read() as conn:
            row = conn.execute(sa.select(*_COLUMNS).where(api_keys.c.key_hash == digest)).first()
        found = None if row is None or row.revoked else _to_key(row)
        with self._cache_lock:
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()  # bounded: a flood of wrong keys cannot grow memory
            self._cache[digest] = (now, found)
        return found

    # -- the request path: what needs the database runs in its threads, never on the event loop ----------

    async def alookup(self, presented: str) -> ApiKey | None:
        """`lookup` for the request path: a static key or a cached answer at once, a database query in the
        database's threads (a slow or unreachable database must not stall every other request)."""
        digest = hash_key(presented)
        with self._cache_lock:
            cached = self._cache.get(digest)
        if digest in self._static or (cached is not None and time.monotonic() - cached[0] < self._ttl):
            return self.lookup(presented)  # answered from memory
        return await self._db.run(self.lookup, presented)

    async def aopen_mode(self) -> bool:
        """`open_mode` for the request path (it queries only while open mode lasts and its cache is stale)."""
        if not self._open:
            return False
        cached = self._any_keys
        if self._static or (cached is not None and time.monotonic() - cached[0] < self._ttl):
            return self.open_mode
        return await self._db.run(lambda: self.open_mode)

    def list(self) -> list[ApiKey]:
        with self._db.read() as conn:
            rows = conn.execute(sa.select(*_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.key_id)).all()
        return [_to_key(row) for row in rows]

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
        with self._db.write() as conn:
            conn.execute(
                sa.insert(api_keys).values(
                    key_id=key.key_id,
                    key_hash=hash_key(plain),
                    name=name,
                    tenant=tenant,
                    user=user,
                    created_at=key.created_at,
                    revoked=0,
                    rate_limit_rps=rate_limit_rps,
                )
            )
        self._forget_cached()
        return plain, key

    def revoke(self, key_id: str) -> bool:
        with self._db.write() as conn:
            result = conn.execute(
                sa.update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked == 0).values(revoked=1)
            )
        self._forget_cached()
        return bool(result.rowcount)

    def _forget_cached(self) -> None:
        # This process sees its own change at once; other processes within the TTL.
        with self._cache_lock:
            self._cache.clear()
        self._any_keys = None

    def close(self) -> None:
        if self._owns_db:
            self._db.close()
