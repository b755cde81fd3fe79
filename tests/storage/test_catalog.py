"""The memory catalog on both backends: users and counts, summary versions, forget; two replicas on one
database; a catalog file written by the old SQLite code."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from memory.catalog import Catalog, Summary
from memory.catalog_schema import SCHEMA
from rapport.core.database import Database
from rapport.core.migrations import state
from tests.support.postgres import Backend

# The DDL of the SQLite catalog before it moved onto rapport.core.database (copied from that release).
OLD_DDL = """
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


def table_rows(db: Database, tenant: str, user: str) -> int:
    with db.read() as conn:
        return sum(
            int(conn.execute(sa.text(f'SELECT COUNT(*) FROM {table} WHERE tenant = :t AND "user" = :u'),
                             {"t": tenant, "u": user}).scalar_one())
            for table in ("users", "summaries")
        )


def test_users_and_counts(storage: Backend) -> None:
    catalog = Catalog(storage.open())
    first = catalog.touch("t", "alice", 2)
    assert (first.items, first.since_summary) == (2, 2)
    records = catalog.touch_many({("t", "bob"): 1, ("t", "alice"): 3, ("u", "alice"): 0})
    # In the order given, each with its sums.
    assert [(r.tenant, r.user, r.items, r.since_summary) for r in records] == [
        ("t", "bob", 1, 1), ("t", "alice", 5, 5), ("u", "alice", 0, 0)
    ]
    assert records[1].created_at == first.created_at and records[1].last_seen >= first.last_seen
    catalog.set_count("t", "alice", 9)
    catalog.reset_since_summary("t", "alice")
    alice = catalog.user("t", "alice")
    assert alice is not None and (alice.items, alice.since_summary) == (9, 0)
    assert catalog.user("t", "nobody") is None
    listed, total = catalog.users("t", limit=1, offset=0)
    assert total == 2 and len(listed) == 1
    every, total_all = catalog.users(None, limit=10, offset=0)
    assert total_all == 3
    # Most recently seen first.
    assert [r.last_seen for r in every] == sorted((r.last_seen for r in every), reverse=True)
    second_page, _ = catalog.users("t", limit=10, offset=1)
    assert len(second_page) == 1 and second_page[0].user != listed[0].user


def test_summaries_versions_import_and_forget(storage: Backend) -> None:
    db = storage.open()
    catalog = Catalog(db)
    with pytest.raises(LookupError):
        catalog.add_summary("t", "ghost", "general", "never", 1, None)
    catalog.touch("t", "alice", 3)
    one = catalog.add_summary("t", "alice", "general", "likes tea", 3, "m")
    two = catalog.add_summary("t", "alice", "general", "likes green tea", 4, "m")
    code = catalog.add_summary("t", "alice", "code", "writes rust", 4, None)
    assert (one.version, two.version, code.version) == (1, 2, 1)
    assert catalog.latest_summary("t", "alice", "general") == two
    assert catalog.latest_summary("t", "alice", "travel") is None
    assert [(s.task, s.version) for s in catalog.summaries("t", "alice")] == [("code", 1), ("general", 2), ("general", 1)]
    assert [s.version for s in catalog.summaries("t", "alice", "general")] == [2, 1]
    replaced = Summary("t", "alice", "general", 2, "imported text", 7, None, 1700000000.5)
    catalog.import_summary(replaced)
    assert catalog.latest_summary("t", "alice", "general") == replaced
    catalog.import_summary(Summary("t", "alice", "general", 5, "newer", 8, "m", 1700000001.0))
    latest = catalog.latest_summary("t", "alice", "general")
    assert latest is not None and latest.version == 5
    catalog.touch("t", "bob", 1)
    catalog.add_summary("t", "bob", "general", "bob's", 1, None)

    assert catalog.forget("t", "alice") == {"summaries": 4, "users": 1}
    assert catalog.raw_rows("t", "alice") == 0 and table_rows(db, "t", "alice") == 0
    assert catalog.latest_summary("t", "alice", "general") is None
    assert catalog.user("t", "alice") is None
    with pytest.raises(LookupError):
        catalog.add_summary("t", "alice", "general", "a job finishing after the forget", 3, None)
    assert table_rows(db, "t", "bob") == 2, "forget touches no other user"
    assert catalog.forget("t", "alice") == {"summaries": 0, "users": 0}


def test_concurrent_touch_many_from_two_replicas_sums(storage: Backend) -> None:
    replicas = [Catalog(storage.open()), Catalog(storage.open())]
    threads_per_replica, calls = 3, 25
    barrier = threading.Barrier(len(replicas) * threads_per_replica)
    errors: list[BaseException] = []

    def work(catalog: Catalog, reverse: bool) -> None:
        barrier.wait()
        try:
            for _ in range(calls):
                keys = [("t", "alice"), ("t", "bob")]
                # Opposite orders from different threads: row locks taken in key order cannot deadlock.
                batch = dict.fromkeys(reversed(keys) if reverse else keys, 0)
                batch[("t", "alice")], batch[("t", "bob")] = 1, 2
                catalog.touch_many(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(catalog, i % 2 == 1))
        for catalog in replicas
        for i in range(threads_per_replica)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    total = len(threads) * calls
    for catalog in replicas:
        alice, bob = catalog.user("t", "alice"), catalog.user("t", "bob")
        assert alice is not None and bob is not None
        assert (alice.items, alice.since_summary, bob.items, bob.since_summary) == (total, total, 2 * total, 2 * total)


def test_concurrent_summaries_from_two_replicas_get_distinct_versions(storage: Backend) -> None:
    replicas = [Catalog(storage.open()), Catalog(storage.open())]
    replicas[0].touch("t", "alice", 1)
    barrier = threading.Barrier(4)
    versions: list[int] = []
    errors: list[BaseException] = []

    def work(catalog: Catalog) -> None:
        barrier.wait()
        try:
            for i in range(10):
                versions.append(catalog.add_summary("t", "alice", "general", f"s{i}", i, None).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(replicas[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(versions) == list(range(1, 41))


def test_a_forget_on_one_replica_is_seen_on_the_other_at_once(postgres_url: str) -> None:
    a_db, b_db = Database.postgres(postgres_url), Database.postgres(postgres_url)
    try:
        a, b = Catalog(a_db), Catalog(b_db)
        a.touch("t", "alice", 2)
        a.add_summary("t", "alice", "general", "allergic to peanuts", 2, None)
        seen = b.latest_summary("t", "alice", "general")
        assert seen is not None and seen.text == "allergic to peanuts"
        assert b.user("t", "alice") is not None
        assert a.forget("t", "alice") == {"summaries": 1, "users": 1}
        # No cache on a shared database: B's next request injects nothing of the user.
        assert b.latest_summary("t", "alice", "general") is None
        assert b.user("t", "alice") is None and b.users("t", 10, 0) == ([], 0)
        assert table_rows(b_db, "t", "alice") == 0
        # A summary written on B after it sees the user again starts over (nothing left of the old versions).
        b.touch("t", "alice", 1)
        assert b.add_summary("t", "alice", "general", "new", 1, None).version == 1
        fresh = a.latest_summary("t", "alice", "general")
        assert fresh is not None and fresh.text == "new"
    finally:
        a_db.close()
        b_db.close()


def test_a_summary_racing_a_forget_never_outlives_it(postgres_url: str) -> None:
    a_db, b_db = Database.postgres(postgres_url), Database.postgres(postgres_url)
    try:
        a, b = Catalog(a_db), Catalog(b_db)

        def summarize(user: str, barrier: threading.Barrier, outcome: list[str]) -> None:
            barrier.wait()
            try:
                a.add_summary("t", user, "general", "racing", 1, None)
                outcome.append("written")
            except LookupError:
                outcome.append("user gone")

        for round_ in range(15):
            user = f"u{round_}"
            a.touch("t", user, 1)
            barrier = threading.Barrier(2)
            outcome: list[str] = []
            thread = threading.Thread(target=summarize, args=(user, barrier, outcome))
            thread.start()
            barrier.wait()
            b.forget("t", user)
            thread.join(timeout=30)
            assert outcome, "the summary writer did not finish"
            assert table_rows(a_db, "t", user) == 0, f"round {round_}: {outcome[0]}, rows left after the forget"
    finally:
        a_db.close()
        b_db.close()


def test_a_catalog_file_written_by_the_old_store_opens_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "memory" / "catalog.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as old:
        old.execute("PRAGMA journal_mode=WAL")
        old.executescript(OLD_DDL)
        old.execute("INSERT INTO users VALUES ('t', 'alice', 4, 1, 1700000000.0, 1700000100.5)")
        old.execute("INSERT INTO summaries VALUES ('t', 'alice', 'general', 1, 'likes tea', 3, 'm', 1700000050.0)")
        old.execute("INSERT INTO summaries VALUES ('t', 'alice', 'general', 2, 'likes green tea', 4, NULL, 1700000090.0)")
    old.close()
    db = Database.sqlite(path)
    try:
        catalog = Catalog(db)
        assert state(db, SCHEMA).ok
        alice = catalog.user("t", "alice")
        assert alice is not None and (alice.items, alice.since_summary, alice.last_seen) == (4, 1, 1700000100.5)
        latest = catalog.latest_summary("t", "alice", "general")
        assert latest is not None and (latest.version, latest.text, latest.model) == (2, "likes green tea", None)
        assert catalog.touch("t", "alice", 2).items == 6
        assert catalog.add_summary("t", "alice", "general", "third", 6, None).version == 3
        assert catalog.forget("t", "alice") == {"summaries": 3, "users": 1}
    finally:
        db.close()
