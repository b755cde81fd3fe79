"""The API key store on both backends: hashes only, open mode, two replicas on one database, an old keys file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from proxy.auth.key_schema import SCHEMA
from proxy.auth.keys import KeyStore, hash_key
from proxy.settings import AuthSettings
from rapport.core.database import Database
from rapport.core.migrations import state
from tests.support.helpers import wait_until
from tests.support.postgres import Backend

# The DDL of the SQLite key store before it moved onto rapport.core.database (copied from that release).
OLD_DDL = (
    "CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL,"
    " name TEXT NOT NULL, tenant TEXT NOT NULL, user TEXT, created_at REAL NOT NULL,"
    " revoked INTEGER NOT NULL DEFAULT 0, rate_limit_rps REAL)"
)


def stored_rows(db: Database) -> list[str]:
    with db.read() as conn:
        return [repr(tuple(row)) for row in conn.execute(sa.text("SELECT * FROM api_keys"))]


def test_keys_lifecycle_stores_only_hashes(storage: Backend) -> None:
    db = storage.open()
    store = KeyStore(db, AuthSettings())
    plain, key = store.create("ci", tenant="acme", user="alice", rate_limit_rps=2.5)
    other, _ = store.create("second", tenant="beta")
    found = store.lookup(plain)
    assert found == key and found.user == "alice" and found.rate_limit_rps == 2.5
    assert abs(found.created_at - time.time()) < 60  # a full-precision epoch on PostgreSQL too
    assert store.lookup(plain + "x") is None
    assert [k.name for k in store.list()] == ["ci", "second"]
    rows = stored_rows(db)
    assert not any(plain in row or other in row for row in rows), "a plain key is in the database"
    assert any(hash_key(plain) in row for row in rows)
    assert store.revoke(key.key_id)
    assert store.lookup(plain) is None, "a revoke takes effect at once on the replica that made it"
    assert not store.revoke(key.key_id)
    assert [k.revoked for k in store.list()] == [True, False]
    assert store.lookup(other) is not None


def test_open_mode_is_decided_at_start(storage: Backend) -> None:
    empty = KeyStore(storage.open(), AuthSettings())
    assert empty.open_mode
    _, key = empty.create("first")
    assert not empty.open_mode, "open mode ends once a key exists"
    started_with_keys = KeyStore(storage.open(), AuthSettings())
    assert started_with_keys.revoke(key.key_id)
    assert not started_with_keys.open_mode, "revoking every key while serving must not open the server"
    # Shared replicas never run open, even on an empty database.
    assert not KeyStore(storage.open(), AuthSettings(), allow_open_mode=False).any_proxy_keys()
    assert not KeyStore(storage.open(), AuthSettings(), allow_open_mode=False).open_mode


def test_a_key_made_on_one_replica_works_on_another_within_the_ttl(storage: Backend) -> None:
    a = KeyStore(storage.open(), AuthSettings(), cache_ttl_s=0.3)
    b = KeyStore(storage.open(), AuthSettings(), cache_ttl_s=0.3)
    assert b.open_mode and not b.any_proxy_keys()
    plain, key = a.create("made on a", tenant="acme")
    # B cached "no keys" a moment ago; within its TTL it sees A's key.
    wait_until(b.any_proxy_keys, within=10)
    assert not b.open_mode
    assert b.lookup(plain) == key
    assert a.revoke(key.key_id)
    wait_until(lambda: b.lookup(plain) is None, within=10)


def test_a_cached_lookup_outlives_a_revoke_elsewhere_only_for_the_ttl(storage: Backend) -> None:
    a = KeyStore(storage.open(), AuthSettings())
    b = KeyStore(storage.open(), AuthSettings(), cache_ttl_s=1.0)
    plain, key = a.create("k")
    cached_at = time.monotonic()
    assert b.lookup(plain) == key
    assert a.revoke(key.key_id)
    wait_until(lambda: b.lookup(plain) is None, within=10)
    # The documented bound: a revoke reaches other replicas within the TTL, and not before their cache expires.
    assert time.monotonic() - cached_at >= 1.0


def test_a_database_error_is_raised_not_taken_for_a_missing_key(storage: Backend) -> None:
    db = storage.open()
    store = KeyStore(db, AuthSettings(), cache_ttl_s=0.0)
    with db.write() as conn:
        conn.execute(sa.text("DROP TABLE api_keys"))
    # The auth dependency turns any exception into a 503; a store that answered None would be a 401 at best.
    with pytest.raises(sa.exc.DBAPIError):
        store.lookup("rk-anything")
    with pytest.raises(sa.exc.DBAPIError):
        store.any_proxy_keys()


def test_a_keys_file_written_by_the_old_store_opens_with_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    plain = "rk-old-key"
    with sqlite3.connect(path) as old:
        old.execute("PRAGMA journal_mode=WAL")
        old.execute(OLD_DDL)
        old.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, tenant, user, created_at, revoked, rate_limit_rps)"
            " VALUES ('key-old', ?, 'old', 'acme', 'alice', 1700000000.25, 0, 3.0)",
            (hash_key(plain),),
        )
        old.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, tenant, user, created_at, revoked, rate_limit_rps)"
            " VALUES ('key-gone', ?, 'gone', 'acme', NULL, 1700000001.0, 1, NULL)",
            (hash_key("rk-revoked"),),
        )
    old.close()
    db = Database.sqlite(path)
    try:
        store = KeyStore(db, AuthSettings())
        assert state(db, SCHEMA).ok
        found = store.lookup(plain)
        assert found is not None and (found.tenant, found.user, found.created_at, found.rate_limit_rps) == (
            "acme", "alice", 1700000000.25, 3.0
        )
        assert store.lookup("rk-revoked") is None
        assert not store.open_mode
        assert [(k.key_id, k.revoked) for k in store.list()] == [("key-old", False), ("key-gone", True)]
        fresh, _ = store.create("new")
        assert store.lookup(fresh) is not None
    finally:
        db.close()
    # The file keeps today's shape: the old code (plain sqlite3) still reads it.
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0] == 3
    check.close()


def test_the_path_convenience_owns_its_file(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite3", AuthSettings())
    plain, _ = store.create("k")
    store.close()
    reopened = KeyStore(tmp_path / "keys.sqlite3", AuthSettings())
    try:
        assert reopened.lookup(plain) is not None
    finally:
        reopened.close()
