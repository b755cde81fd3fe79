"""The vector store contract, on both stores (embedded Chroma and PostgreSQL + pgvector), and what only the
Postgres store does: per-user partial HNSW indexes, their recall against an exact scan, and their removal on
forget. Real parts: embedded Chroma, and a real PostgreSQL 16 + pgvector 0.6 (the session's pgserver)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from memory.items import MemoryItem
from memory.pg_store import PgVectorStore, index_name
from memory.store import ChromaStore, MemoryStore
from rapport.core.database import Database
from tests.support.helpers import wait_until

DIM = 384
Array = np.ndarray[Any, np.dtype[np.float32]]


def vectors(n: int, seed: int, dim: int = DIM) -> Array:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered(n: int, seed: int, centres: int = 30, spread: float = 0.05) -> tuple[Array, Array]:
    """`n` unit vectors around `centres` topic centres, and 20 queries near stored ones (a relevant item is
    near a query, as with real embeddings; bench/pg_index.py also measures pure random queries)."""
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((centres, DIM)).astype(np.float32)
    pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    rows = pool[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, DIM)).astype(np.float32)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    near = rows[rng.integers(0, n, 20)] + spread * rng.standard_normal((20, DIM)).astype(np.float32)
    return rows, near / np.linalg.norm(near, axis=1, keepdims=True)


def items(user: str, texts: list[str], tenant: str = "t", **fields: Any) -> list[MemoryItem]:
    return [MemoryItem(tenant, user, text, ts=1000.0 + i, **fields) for i, text in enumerate(texts)]


@pytest.fixture()
def database(postgres_url: str) -> Iterator[Database]:
    db = Database.postgres(postgres_url)
    yield db
    db.close()


@pytest.fixture(params=["chroma", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore]:
    made: MemoryStore
    if request.param == "chroma":
        made = ChromaStore(path=tmp_path / "chroma", prefix="contract")
    else:
        made = PgVectorStore(request.getfixturevalue("database"), DIM)
    yield made
    made.close()


# -- the contract, on both stores ---------------------------------------------------------------------------


def test_add_stores_only_new_ids_and_says_which(store: MemoryStore) -> None:
    first = items("u", ["I live in Lisbon.", "I play the cello."])
    assert store.add(first, vectors(2, seed=1)) == [it.id for it in first]
    again = items("u", ["I play the cello.", "I own a cat.", "I own a cat."])
    # The known item and the batch's repeated id are not stored again.
    assert store.add(again, vectors(3, seed=2)) == [again[1].id]
    assert store.count("t", "u") == 3
    # The first vector of a repeated id is the one kept: querying with it finds the item at similarity 1.
    [hit] = store.query("t", "u", vectors(3, seed=2)[1], 1)
    assert hit.item.text == "I own a cat." and hit.similarity == pytest.approx(1.0, abs=1e-5)


def test_query_ranks_by_cosine_and_returns_items_and_vectors(store: MemoryStore) -> None:
    vecs = vectors(20, seed=3)
    stored = items("u", [f"fact {i}" for i in range(20)], conversation_id="c1", model="m", task="chat")
    store.add(stored, vecs)
    probe = vecs[7] + 0.1 * vecs[3]
    probe = probe / np.linalg.norm(probe)
    hits = store.query("t", "u", probe, 5)
    expected = np.argsort(-(vecs @ probe))[:5]
    assert [h.item.text for h in hits] == [f"fact {i}" for i in expected]
    assert [h.similarity for h in hits] == pytest.approx(list((vecs @ probe)[expected]), abs=1e-5)
    assert np.allclose(hits[0].embedding, vecs[7], atol=1e-6)
    assert hits[0].item.to_dict() == stored[7].to_dict()
    assert store.query("t", "u", probe, 0) == []
    assert len(store.query("t", "u", probe, 50)) == 20


def test_upsert_replaces_text_fields_and_vector(store: MemoryStore) -> None:
    [item] = items("u", ["I drive a red car."])
    store.add([item], vectors(1, seed=4))
    edited = MemoryItem("t", "u", "I ride a blue bicycle.", ts=2000.0, task="edit", id=item.id)
    new_vec = vectors(1, seed=5)
    store.upsert([edited], new_vec)
    assert [it.to_dict() for it in store.get("t", "u")] == [edited.to_dict()]
    [hit] = store.query("t", "u", new_vec[0], 1)
    assert hit.similarity == pytest.approx(1.0, abs=1e-5)
    store.upsert(items("u", ["a new one"]), vectors(1, seed=6))  # upsert also inserts
    assert store.count("t", "u") == 2


def test_get_by_ids_and_where_in_time_order(store: MemoryStore) -> None:
    said = [
        MemoryItem("t", "u", "later user line", ts=30.0, role="user", conversation_id="a"),
        MemoryItem("t", "u", "assistant line", ts=20.0, role="assistant", conversation_id="a"),
        MemoryItem("t", "u", "early user line", ts=10.0, role="user", conversation_id="b", source="import"),
    ]
    store.add(said, vectors(3, seed=7))
    assert [it.text for it in store.get("t", "u")] == ["early user line", "assistant line", "later user line"]
    assert [it.text for it in store.get("t", "u", where={"role": "user"})] == [
        "early user line",
        "later user line",
    ]
    assert [it.text for it in store.get("t", "u", where={"conversation_id": "a", "role": "user"})] == [
        "later user line"
    ]
    assert [it.text for it in store.get("t", "u", where={"source": "import"})] == ["early user line"]
    assert [it.text for it in store.get("t", "u", ids=[said[1].id, "missing"])] == ["assistant line"]
    assert store.get("t", "nobody") == []


def test_delete_and_delete_user(store: MemoryStore) -> None:
    stored = items("u", ["one", "two", "three"])
    store.add(stored, vectors(3, seed=8))
    store.delete("t", "u", [stored[0].id, "missing"])
    assert [it.text for it in store.get("t", "u")] == ["two", "three"]
    assert store.add([stored[0]], vectors(1, seed=8)) == [stored[0].id]  # a deleted id can be stored again
    assert store.delete_user("t", "u") == 3
    assert store.count("t", "u") == 0 and store.get("t", "u") == []
    assert store.query("t", "u", vectors(1, seed=8)[0], 5) == []
    assert store.delete_user("t", "u") == 0
    assert store.heartbeat()


def test_other_users_and_tenants_are_never_seen(store: MemoryStore) -> None:
    probe = vectors(1, seed=9)
    mine = items("alice", ["alice's own"])
    # The other rows are the probe itself: the nearest vectors in the store, all someone else's.
    bobs = items("bob", ["bob's secret"])
    other_tenant = items("alice", ["other tenant's alice"], tenant="t2")
    store.add(mine, vectors(1, seed=10))
    store.add(bobs, probe)
    store.add(other_tenant, probe)
    assert [h.item.text for h in store.query("t", "alice", probe[0], 10)] == ["alice's own"]
    assert [it.text for it in store.get("t", "alice")] == ["alice's own"]
    assert store.get("t", "alice", ids=[bobs[0].id, other_tenant[0].id]) == []
    assert store.count("t", "alice") == 1
    store.delete("t", "alice", [bobs[0].id, other_tenant[0].id])  # ids of others delete nothing of theirs
    assert store.delete_user("t", "alice") == 1
    assert store.count("t", "bob") == 1 and store.count("t2", "alice") == 1


# -- Postgres only: per-user partial indexes ----------------------------------------------------------------


def _plan(db: Database, store: PgVectorStore, tenant: str, user: str) -> str:
    """The plan of the store's own query for the user (EXPLAIN of what `query` sends)."""
    captured: list[str] = []

    @sa.event.listens_for(db.engine, "before_cursor_execute")
    def _capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if "ORDER BY" in statement and "<=>" in statement:
            captured.append(statement)

    store.query(tenant, user, vectors(1, seed=0)[0], 10)
    sa.event.remove(db.engine, "before_cursor_execute", _capture)
    [statement] = captured
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN")
        uses_index = store.has_index(tenant, user)
        if uses_index:
            cursor.execute(f"SET LOCAL hnsw.ef_search = {store.ef_search}")
            cursor.execute("SET LOCAL enable_sort = off")
        q = "[" + ",".join(["0.1"] * DIM) + "]"
        cursor.execute("EXPLAIN " + statement, {"q": q, "t": tenant, "u": user, "n": 10})
        plan = "\n".join(str(row[0]) for row in cursor.fetchall())
        cursor.execute("ROLLBACK")
        return plan
    finally:
        raw.close()


def test_big_user_gets_a_partial_index_with_exact_recall_and_no_leaks(database: Database) -> None:
    store = PgVectorStore(database, DIM, index_threshold=2000)
    big, probes = clustered(3000, seed=11)
    rows = [MemoryItem("t", "big", f"big {i}", ts=float(i)) for i in range(3000)]
    store.add(rows[:1500], big[:1500])
    assert not store.has_index("t", "big")  # below the threshold: exact scan only
    # Rows of others that equal the probes: whatever leaked through the index would rank first.
    store.add([MemoryItem("t", f"other{i}", f"other {i}") for i in range(20)], probes)
    store.add([MemoryItem("t2", "big", f"tenant2 {i}") for i in range(20)], probes)
    store.add(rows[1500:], big[1500:])  # crosses the threshold: the build starts in the background
    wait_until(lambda: store.has_index("t", "big"), within=120)
    assert store.wait_for_indexes(timeout_s=120)
    assert index_name("t", "big") in _plan(database, store, "t", "big")
    assert index_name("t", "big") not in _plan(database, store, "t", "other0")

    found = 0
    for probe in probes:
        exact = {f"big {i}" for i in np.argsort(-(big @ probe))[:10]}
        hits = store.query("t", "big", probe, 10)
        assert all(h.item.user == "big" and h.item.tenant == "t" for h in hits)
        found += len(exact & {h.item.text for h in hits})
    assert found / (10 * len(probes)) >= 0.99

    # Forgetting the user removes the index with the rows; other users keep theirs.
    assert store.delete_user("t", "big") == 3000
    assert not store.collection_exists("t", "big")
    assert store.count("t2", "big") == 20 and store.count("t", "other3") == 1


def test_user_ids_with_quotes_are_indexed_and_isolated(database: Database) -> None:
    store = PgVectorStore(database, 8, index_threshold=30, build_in_background=False)
    odd = "o'brien'); DROP TABLE memory_items; --"
    vecs = vectors(40, seed=13, dim=8)
    store.add([MemoryItem("t", odd, f"row {i}") for i in range(40)], vecs)
    store.add([MemoryItem("t", "o", "plain o")], vecs[:1])
    assert store.has_index("t", odd)
    assert [h.item.text for h in store.query("t", odd, vecs[5], 1)] == ["row 5"]
    assert [h.item.text for h in store.query("t", "o", vecs[5], 5)] == ["plain o"]


def test_an_embedding_of_another_dimension_is_refused(database: Database) -> None:
    PgVectorStore(database, DIM)
    with pytest.raises(ValueError, match="384-dimensional"):
        PgVectorStore(database, 768)


def test_forget_while_the_users_index_is_being_built_leaves_nothing(database: Database) -> None:
    store = PgVectorStore(database, DIM, index_threshold=2000)
    rows, _ = clustered(2500, seed=14)
    store.add([MemoryItem("t", "leaving", f"row {i}") for i in range(2500)], rows)  # starts the build
    assert store.delete_user("t", "leaving") == 2500  # at once, while the build runs or just after
    assert store.wait_for_indexes(timeout_s=120)
    assert not store.collection_exists("t", "leaving")
    assert store.query("t", "leaving", rows[0], 5) == []
