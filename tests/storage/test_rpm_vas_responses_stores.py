"""RPM's store, VAS profiles and stored responses on both backends: what each keeps and returns, two replicas on
one database (written on A, read and forgotten on B), and data dir files written by the stores' old DDL."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from proxy.entrypoints.responses.store import SqlResponseStore, StoredResponse
from proxy.entrypoints.responses.store_schema import SCHEMA as RESPONSES_SCHEMA
from proxy.entrypoints.responses.store_schema import responses
from rapport.core.database import Database
from rapport.core.migrations import state
from reasoning.rpm.models import FactorStats, Feature
from reasoning.rpm.store import RPMStore
from reasoning.rpm.store_schema import SCHEMA as RPM_SCHEMA
from reasoning.rpm.store_schema import TABLES
from reasoning.vas.store import ProfileStore
from reasoning.vas.store_schema import SCHEMA as VAS_SCHEMA
from tests.support.postgres import Backend

DAY = 86400.0


def vec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def rpm_rows(db: Database, tenant: str, user: str) -> dict[str, int]:
    """Rows of the user in each RPM table, counted in the database itself (not through the store)."""
    tables = TABLES[db.dialect]
    counts = {}
    with db.read() as conn:
        for table in (tables.entries, tables.features, tables.factors, tables.paths, tables.builds):
            where = sa.and_(table.c.tenant == tenant, table.c.user == user)
            counts[table.name] = int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one())
    return counts


def fill_rpm(store: RPMStore, tenant: str, user: str) -> list[int]:
    """Two entries, each with features, a factor over them and a reasoning path; a build record."""
    ids = store.add_entries(tenant, user, [("pick a dish", "ramen", "food"), ("pick a film", "Alien", None)], "import")
    for entry_id, (name, value) in zip(ids, [("cuisine", "japanese"), ("genre", "sci-fi")], strict=True):
        store.set_input_vec(tenant, user, entry_id, vec(1.0, float(entry_id)))
        store.add_features(tenant, user, entry_id, [Feature(name=name, value=value, evidence="said so")], "llm",
                           np.stack([vec(0.5, 0.5)]), np.stack([vec(0.25, 0.75)]))
        store.set_status(tenant, user, entry_id, "extracted", "note")
        store.set_path(tenant, user, entry_id, f"because {value}", "llm", vec(0.1, 0.2))
        store.set_status(tenant, user, entry_id, "done")
    features = store.features(tenant, user)
    store.replace_factors(tenant, user, [("taste", ["cuisine", "genre"], FactorStats(entries=2, frequency=1.0),
                                          vec(0.3, 0.7), [f.id for f in features])])
    store.set_build(tenant, user, "done", 2, 2, "built")
    return ids


def test_rpm_store_keeps_and_returns_a_users_history_and_derived_rows(storage: Backend) -> None:
    store = RPMStore(storage.open())
    ids = fill_rpm(store, "t", "alice")
    fill_rpm(store, "t", "bob")
    assert store.entry_ids("t", "alice") == ids and store.entry_ids("t", "alice", "done") == ids
    assert store.count_entries("t", "alice") == {"done": 2}
    assert store.users("t") == ["alice", "bob"] and store.users("other") == []

    first, second = store.entries("t", "alice", details=True)
    assert (first.input, first.response, first.task, first.source) == ("pick a dish", "ramen", "food", "import")
    assert first.skip_reason == "note", "set_status without a reason keeps the one it had"
    assert abs(first.created_at - time.time()) < 60  # a full-precision epoch on PostgreSQL too
    assert [(f.name, f.value, f.extractor) for f in first.features] == [("cuisine", "japanese", "llm")]
    assert first.reasoning is not None and first.reasoning.text == "because japanese"
    assert store.entries("t", "alice", limit=1, offset=1)[0].id == second.id
    assert store.entries("t", "alice", ids=[]) == [] and store.entries("t", "bob", ids=ids) == []

    entry_ids, inputs = store.input_vectors("t", "alice")
    assert entry_ids == ids and inputs.dtype == np.float32 and inputs[1].tolist() == [1.0, float(ids[1])]
    assert store.input_vectors("t", "alice", task="food")[0] == [ids[0]]
    feats, names, values = store.feature_vectors("t", "alice")
    assert [f.entry_id for f in feats] == ids and names.shape == (2, 2) and values[0].tolist() == [0.25, 0.75]

    [factor] = store.factors("t", "alice")
    assert factor.name == "taste" and factor.members == ["cuisine", "genre"] and factor.stats.entries == 2
    assert [f.factor_id for f in store.features("t", "alice")] == [factor.id, factor.id]
    assert [f.name for f in store.features("t", "alice", factor_id=factor.id)] == ["cuisine", "genre"]
    factor_ids, centroids = store.factor_centroids("t", "alice")
    assert factor_ids == [factor.id] and centroids[0].tolist() == [0.30000001192092896, 0.699999988079071]

    store.set_path("t", "alice", ids[0], "because it is warm", "template", None)  # a replace, not a second row
    assert [(p.entry_id, p.text, p.source) for p in store.paths("t", "alice")] == [
        (ids[0], "because it is warm", "template"), (ids[1], "because sci-fi", "llm")]
    assert store.delete_path("t", "alice", ids[0]) and not store.delete_path("t", "alice", ids[0])
    assert store.count_entries("t", "alice") == {"done": 1, "extracted": 1}, "a deleted path is rebuilt"
    build = store.build("t", "alice")
    assert build is not None and (build["state"], build["done"], build["message"]) == ("done", 2, "built")
    store.set_build("t", "alice", "running", 1, 3)  # one row per user, updated
    build = store.build("t", "alice")
    assert build is not None and (build["state"], build["done"], build["total"], build["message"]) == ("running", 1, 3, None)

    assert store.delete_factor("t", "alice", factor.id) and not store.delete_factor("t", "alice", factor.id)
    assert [f.factor_id for f in store.features("t", "alice")] == [None, None]
    assert not store.delete_entry("t", "bob", ids[1]), "another user's entry id is not theirs to delete"
    assert store.delete_entry("t", "alice", ids[1])
    assert store.entry_ids("t", "alice") == [ids[0]]
    assert [f.entry_id for f in store.features("t", "alice")] == [ids[0]], "the entry's features went with it"
    assert store.paths("t", "alice") == []

    store.reset_user("t", "alice")
    assert store.count_entries("t", "alice") == {"pending": 1} and store.features("t", "alice") == []
    assert store.entries("t", "alice")[0].skip_reason is None
    assert store.forget_user("t", "alice") == 1
    assert set(rpm_rows(store.db, "t", "alice").values()) == {0}
    assert rpm_rows(store.db, "t", "bob")[TABLES[store.db.dialect].features.name] == 2, "bob keeps his rows"


def test_rpm_rows_derived_from_a_deleted_entry_are_not_written(storage: Backend) -> None:
    store = RPMStore(storage.open())
    [entry_id] = store.add_entries("t", "alice", [("q", "a", None)], "exchange")
    store.forget_user("t", "alice")
    # A build that read the entry before the forget finishes its steps after it: nothing comes back.
    store.add_features("t", "alice", entry_id, [Feature(name="n", value="v")], "cheap",
                       np.stack([vec(1.0)]), np.stack([vec(1.0)]))
    store.set_path("t", "alice", entry_id, "late", "llm", vec(1.0))
    store.set_input_vec("t", "alice", entry_id, vec(1.0))
    store.set_status("t", "alice", entry_id, "done")
    assert store.replace_factors("t", "alice", [("taste", ["n"], FactorStats(entries=1, frequency=1.0), vec(1.0),
                                                 [])]) == []
    store.set_build("t", "alice", "done", 1, 1, "1 extracted")
    assert set(rpm_rows(store.db, "t", "alice").values()) == {0}


def test_an_rpm_build_racing_a_forget_on_another_replica_leaves_nothing(storage: Backend) -> None:
    a, b = RPMStore(storage.open()), RPMStore(storage.open())
    stats = FactorStats(entries=1, frequency=1.0)

    def build(user: str, entry_id: int, barrier: threading.Barrier, errors: list[BaseException]) -> None:
        barrier.wait()
        try:
            for step in range(4):
                a.add_features("t", user, entry_id, [Feature(name="n", value=f"v{step}")], "cheap",
                               np.stack([vec(1.0)]), np.stack([vec(float(step))]))
                a.set_path("t", user, entry_id, f"path {step}", "llm", vec(1.0))
                a.replace_factors("t", user, [("f", ["n"], stats, vec(1.0), [])])
                a.set_build("t", user, "running", step, 4)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    for round_ in range(12):
        user = f"u{round_}"
        [entry_id] = a.add_entries("t", user, [("q", "a", None)], "exchange")
        barrier, errors = threading.Barrier(2), []
        thread = threading.Thread(target=build, args=(user, entry_id, barrier, errors))
        thread.start()
        barrier.wait()
        b.forget_user("t", user)
        thread.join(timeout=30)
        assert not thread.is_alive() and not errors, errors
        assert set(rpm_rows(a.db, "t", user).values()) == {0}, f"round {round_}: rows left after the forget"


def test_rpm_two_replicas_share_one_database(storage: Backend) -> None:
    a, b = RPMStore(storage.open()), RPMStore(storage.open())
    ids = fill_rpm(a, "t", "alice")
    assert b.entry_ids("t", "alice", "done") == ids, "B reads what A committed, at once"
    assert [f.name for f in b.features("t", "alice")] == ["cuisine", "genre"] and len(b.factors("t", "alice")) == 1
    assert b.forget_user("t", "alice") == 2
    assert a.entries("t", "alice") == [] and a.factors("t", "alice") == [] and a.paths("t", "alice") == []
    assert a.build("t", "alice") is None and set(rpm_rows(a.db, "t", "alice").values()) == {0}
    # Ids come from one sequence: entries written on both replicas never collide.
    more = a.add_entries("t", "carol", [("x", "y", None)], "import") + b.add_entries("t", "carol", [("z", "w", None)], "import")
    assert len(set(more)) == 2 and a.entry_ids("t", "carol") == sorted(more)


def test_vas_profiles_on_two_replicas(storage: Backend) -> None:
    a, b = ProfileStore(storage.open()), ProfileStore(storage.open())
    assert b.get("t", "alice") is None
    a.put("t", "alice", {"sentiment": 0.5, "brevity": 2.0}, 3.5)
    profile = b.get("t", "alice")
    assert profile is not None and profile.weights == {"sentiment": 0.5, "brevity": 2.0} and profile.beta == 3.5
    assert abs(profile.updated_at - time.time()) < 60
    b.put("t", "alice", {"sentiment": 1.0}, None)  # an update replaces the profile
    again = a.get("t", "alice")
    assert again is not None and again.weights == {"sentiment": 1.0} and again.beta is None
    a.put("t", "bob", {"sentiment": 0.1}, None)
    assert a.get("other", "alice") is None
    assert b.delete("t", "alice") == 1 and b.delete("t", "alice") == 0
    assert a.get("t", "alice") is None and a.get("t", "bob") is not None


def stored(rid: str, user: str, created_at: float, text: str = "hi") -> StoredResponse:
    return StoredResponse(rid, "t", user, created_at, {"id": rid, "output_text": text, "nested": {"n": [1, 2.5]}},
                          [{"role": "user", "content": text}, {"role": "assistant", "content": "\u00e9\u00e8 ok"}])


def test_stored_responses_on_two_replicas(storage: Backend) -> None:
    a = SqlResponseStore(storage.open(), retention_s=30 * DAY)
    b = SqlResponseStore(storage.open(), retention_s=30 * DAY)
    now = time.time()
    a.save(stored("resp_1", "alice", now - 10))
    a.save(stored("resp_2", "alice", now))
    a.save(stored("resp_1", "bob", now))  # the same id for another user is another response
    got = b.get("t", "alice", "resp_1")
    assert got == stored("resp_1", "alice", now - 10), "B continues from what A stored"
    assert b.get("t", "carol", "resp_1") is None and b.get("other", "alice", "resp_1") is None
    b.save(stored("resp_1", "alice", now, "replaced"))  # saving an id again replaces it
    assert a.get("t", "alice", "resp_1") == stored("resp_1", "alice", now, "replaced")
    assert [r.id for r in a.export_user("t", "alice")] == ["resp_1", "resp_2"]
    assert b.delete("t", "alice", "resp_2") and not a.delete("t", "alice", "resp_2")
    assert b.forget_user("t", "alice") == 1
    assert a.get("t", "alice", "resp_1") is None and a.export_user("t", "alice") == []
    assert a.get("t", "bob", "resp_1") is not None


def test_stored_responses_past_retention_are_hidden_then_purged(storage: Backend) -> None:
    db = storage.open()
    store = SqlResponseStore(db, retention_s=DAY)
    now = time.time()
    # Rows that expired while no response was saved (written directly: a save would purge them at once).
    with db.write() as conn:
        conn.execute(sa.insert(responses), [
            {"id": f"old_{i}", "tenant": "t", "user": "alice", "created_at": now - 2 * DAY, "response": b"{}",
             "history": b"[]"} for i in range(150)])
    store.save(stored("new", "alice", now))
    assert store.get("t", "alice", "old_0") is None, "an expired response is not returned even before its purge"
    assert [r.id for r in store.export_user("t", "alice")] == ["new"]

    def rows() -> int:
        with db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(responses)).scalar_one())

    # Each save purges up to 100 expired rows: the first one left 50, the next one the live ones only.
    assert rows() == 151 - 100
    store.save(stored("newer", "alice", now))
    assert rows() == 2


# -- data dirs written by the stores before they moved onto rapport.core.database ---------------------------
# The DDL below is copied from that release (reasoning/rpm/store.py, reasoning/vas/store.py,
# proxy/entrypoints/responses/store.py) and run the way those stores ran it, through the stdlib driver.

OLD_RPM_DDL = """
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
OLD_VAS_DDL = """
CREATE TABLE IF NOT EXISTS vas_profiles (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    weights TEXT NOT NULL,
    beta REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, user)
);
"""
OLD_RESPONSES_DDL = (
    "CREATE TABLE IF NOT EXISTS responses (id TEXT NOT NULL, tenant TEXT NOT NULL, user TEXT NOT NULL,"
    " created_at REAL NOT NULL, response BLOB NOT NULL, history BLOB NOT NULL,"
    " PRIMARY KEY (tenant, user, id))",
    "CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at)",
)


def old_file(path: Path, script: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(script)
    return old


def test_an_rpm_file_written_by_the_old_store_opens_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "rpm" / "rpm.sqlite3"
    old = old_file(path, OLD_RPM_DDL)
    old.execute("INSERT INTO entries (tenant,user,input,response,task,source,status,created_at,input_vec)"
                " VALUES ('t','alice','pick a dish','ramen','food','import','done',1700000000.5,?)", (vec(1, 2).tobytes(),))
    old.execute("INSERT INTO features (entry_id,tenant,user,name,value,evidence,extractor,factor_id,name_vec,feat_vec)"
                " VALUES (1,'t','alice','cuisine','japanese','said so','llm',1,?,?)", (vec(3, 4).tobytes(), vec(5, 6).tobytes()))
    old.execute("INSERT INTO factors (tenant,user,name,members,stats,centroid) VALUES ('t','alice','taste',"
                "'[\"cuisine\"]',?,?)", (FactorStats(entries=1, frequency=1.0).model_dump_json(), vec(7, 8).tobytes()))
    old.execute("INSERT INTO paths VALUES (1,'t','alice','because ramen','llm',NULL)")
    old.execute("INSERT INTO builds VALUES ('t','alice','done',1,1,NULL,1700000001.0)")
    old.close()

    db = Database.sqlite(path)
    try:
        store = RPMStore(db)
        assert state(db, RPM_SCHEMA).ok
        [entry] = store.entries("t", "alice", details=True)
        assert (entry.id, entry.input, entry.status, entry.created_at) == (1, "pick a dish", "done", 1700000000.5)
        assert [(f.name, f.factor_id) for f in entry.features] == [("cuisine", 1)]
        assert entry.reasoning is not None and entry.reasoning.text == "because ramen"
        assert store.input_vectors("t", "alice")[1].tolist() == [[1.0, 2.0]]
        assert store.feature_vectors("t", "alice")[2].tolist() == [[5.0, 6.0]]
        assert store.factor_centroids("t", "alice")[1].tolist() == [[7.0, 8.0]]
        assert store.factors("t", "alice")[0].members == ["cuisine"]
        assert store.build("t", "alice") == {"state": "done", "done": 1, "total": 1, "message": None,
                                             "updated_at": 1700000001.0}
        assert store.add_entries("t", "alice", [("q", "a", None)], "exchange") == [2], "ids continue after the old rows"
        assert store.forget_user("t", "alice") == 2 and set(rpm_rows(db, "t", "alice").values()) == {0}
    finally:
        db.close()


def test_a_vas_file_written_by_the_old_store_opens_with_its_profiles(tmp_path: Path) -> None:
    path = tmp_path / "vas" / "vas.sqlite3"
    old = old_file(path, OLD_VAS_DDL)
    old.execute("INSERT INTO vas_profiles VALUES ('t', 'alice', '{\"sentiment\": 0.5}', 2.0, 1700000000.25)")
    old.close()
    db = Database.sqlite(path)
    try:
        store = ProfileStore(db)
        assert state(db, VAS_SCHEMA).ok
        profile = store.get("t", "alice")
        assert profile is not None
        assert (profile.weights, profile.beta, profile.updated_at) == ({"sentiment": 0.5}, 2.0, 1700000000.25)
        store.put("t", "alice", {"sentiment": 1.0}, None)
        assert store.delete("t", "alice") == 1
    finally:
        db.close()


def test_a_responses_file_written_by_the_old_store_opens_with_its_rows(tmp_path: Path) -> None:
    import orjson

    path = tmp_path / "responses.sqlite3"
    old = old_file(path, ";\n".join(OLD_RESPONSES_DDL))
    now = time.time()
    kept = stored("resp_old", "alice", now - 60)
    old.execute("INSERT OR REPLACE INTO responses (id, tenant, user, created_at, response, history) VALUES (?,?,?,?,?,?)",
                (kept.id, kept.tenant, kept.user, kept.created_at, orjson.dumps(kept.response), orjson.dumps(kept.history)))
    old.close()
    db = Database.sqlite(path)
    try:
        store = SqlResponseStore(db, retention_s=30 * DAY)
        assert state(db, RESPONSES_SCHEMA).ok
        assert store.get("t", "alice", "resp_old") == kept
        store.save(stored("resp_new", "alice", now))
        assert [r.id for r in store.export_user("t", "alice")] == ["resp_old", "resp_new"]
        assert store.forget_user("t", "alice") == 2
    finally:
        db.close()
