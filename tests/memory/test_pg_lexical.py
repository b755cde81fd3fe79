"""Lexical retrieval on PostgreSQL (memory/stores/pg_lexical.py), on a real PostgreSQL 16 + pgvector (the
session's pgserver) and, through a real Rapport server, on both backends: a name found only lexically reaches
the prompt; BM25 ranks a rare word above a common one where ts_rank_cd (no IDF) cannot tell them apart; the
per-request switches turn the lexical part off and pick the rank, and the `rapport` extension says what ran;
another user's or tenant's rows never score; the migration fills the lexemes of rows written before it; a
forget takes them with the items."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
import sqlalchemy as sa

from memory.items import MemoryItem
from memory.pg_store import SCHEMA, TABLE, PgVectorStore, vector_literal
from memory.stores.pg_lexical import STATS_TABLE, PgLexicalIndex, owner_lexeme
from rapport.core.database import Database
from rapport.core.migrations import Schema, ensure, migrate
from tests.memory.test_hybrid import DISTRACTORS, HOSTILE, MEMORY_ONLY, QUESTION, TARGET, ask, say, total
from tests.support.helpers import admin, wait_until

DIM = 8


def unit(n: int, seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def put(store: PgVectorStore, tenant: str, user: str, texts: list[str], **fields: Any) -> list[MemoryItem]:
    made = [MemoryItem(tenant, user, text, ts=1000.0 + i, **fields) for i, text in enumerate(texts)]
    store.add(made, unit(len(made), len(texts)))
    return made


@pytest.fixture()
def database(postgres_url: str) -> Iterator[Database]:
    db = Database.postgres(postgres_url)
    yield db
    db.close()


@pytest.fixture()
def store(database: Database) -> PgVectorStore:
    return PgVectorStore(database, DIM)


@pytest.fixture()
def index(database: Database, store: PgVectorStore) -> PgLexicalIndex:
    return PgLexicalIndex(database, TABLE)


def test_bm25_ranks_a_rare_name_above_a_common_word_ts_rank_cd_cannot(
    store: PgVectorStore, index: PgLexicalIndex
) -> None:
    # Every item holds one of the query's words once: eight hold "account", one holds "Thaddeus".
    made = put(store, "t", "u", [*DISTRACTORS, TARGET])
    target = made[-1].id

    bm25 = index.search("t", "u", QUESTION, 20, rank="bm25")
    assert len(bm25) == len(made)  # every item holds a query word
    assert bm25[0].id == target
    assert bm25[0].score > 2 * bm25[1].score  # idf: 1 of 9 items against 8 of 9

    # Cover density sees one occurrence of one query word in each item, and nothing of how rare it is.
    cd = {hit.id: hit.score for hit in index.search("t", "u", QUESTION, 20, rank="ts_rank_cd")}
    assert len(cd) == len(made)
    assert cd[target] <= max(score for item_id, score in cd.items() if item_id != target)

    # The default rank is BM25; a query of stopwords only, or with no words, matches nothing.
    assert [h.id for h in index.search("t", "u", QUESTION, 1)] == [target]
    assert index.search("t", "u", "what did I say about it", 5) == []
    assert index.search("t", "u", "", 5) == []


def test_another_users_rows_never_score(store: PgVectorStore, index: PgLexicalIndex) -> None:
    text = "Thaddeus plays the cello"
    mine = put(store, "t1", "u", [text])[0]
    put(store, "t1", "v", [text, text + " on Sundays", "Thaddeus again"])
    put(store, "t2", "u", [text])
    put(store, "t1", "ü ser'; --", [text])
    # Another user who writes u's owner lexeme as a word is still not u.
    put(store, "t1", "mallory", [f"{owner_lexeme('t1', 'u')} Thaddeus"])
    for rank in ("bm25", "ts_rank_cd"):
        found = index.search("t1", "u", "Thaddeus cello", 50, rank=rank)  # type: ignore[arg-type]
        assert [h.id for h in found] == [mine.id]
        assert index.search("t3", "u", "Thaddeus", 10, rank=rank) == []  # type: ignore[arg-type]
    assert len(index.search("t1", "ü ser'; --", "thaddeus", 10)) == 1
    assert len(index.search("t1", "v", "thaddeus", 10)) == 3
    # The BM25 statistics are the user's own: u's only item scores the same whatever v holds.
    alone = index.search("t1", "u", "Thaddeus", 5)[0].score
    put(store, "t1", "v", [f"Thaddeus number {i}" for i in range(20)])
    assert index.search("t1", "u", "Thaddeus", 5)[0].score == pytest.approx(alone)
    for query in HOSTILE:
        index.search("t1", "u", query, 5)  # words only: no tsquery syntax error
    # u's own owner digest typed as a word is not a word that matches every row of u.
    put(store, "t1", "u", ["an unrelated line"])
    assert index.search("t1", "u", owner_lexeme("t1", "u"), 5) == []


def test_forget_removes_the_lexemes_with_the_items(store: PgVectorStore, index: PgLexicalIndex) -> None:
    put(store, "t", "u", [TARGET, *DISTRACTORS])
    put(store, "t", "other", [TARGET])
    assert index.count("t", "u") == len(DISTRACTORS) + 1
    assert store.delete_user("t", "u") == len(DISTRACTORS) + 1
    assert index.search("t", "u", QUESTION, 20) == []
    assert index.count("t", "u") == 0
    assert len(index.search("t", "other", QUESTION, 20)) == 1
    # Deleting and editing single items: the generated column follows the row.
    item = put(store, "t", "u", ["Ottoline sings"])[0]
    store.upsert([MemoryItem("t", "u", "Perpetua sings", ts=item.ts, id=item.id)], unit(1, 3))
    assert index.search("t", "u", "Ottoline", 5) == []
    assert [h.id for h in index.search("t", "u", "Perpetua", 5)] == [item.id]
    store.delete("t", "u", [item.id])
    assert index.search("t", "u", "Perpetua", 5) == []


def statistics(db: Database, tenant: str, user: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(the trigger-kept row, the same figures counted from the items now)."""
    with db.read() as conn:
        kept = conn.execute(
            sa.text(f"SELECT docs, lexemes FROM {STATS_TABLE} WHERE tenant = :t AND user_id = :u"),
            {"t": tenant, "u": user},
        ).one_or_none()
        counted = conn.execute(
            sa.text(
                f"SELECT count(*), sum(length(lexemes) - 1) FROM {TABLE} WHERE tenant = :t AND user_id = :u "
                "HAVING count(*) > 0"
            ),
            {"t": tenant, "u": user},
        ).one_or_none()
    return (tuple(kept) if kept else None), (tuple(counted) if counted else None)  # type: ignore[return-value]


def test_bm25_statistics_follow_every_write(store: PgVectorStore, index: PgLexicalIndex, database: Database) -> None:
    mine = put(store, "t", "u", [*DISTRACTORS, TARGET])
    put(store, "t", "v", ["Thaddeus tunes pianos", "and violins"])
    put(store, "t", "u", [*DISTRACTORS[:2]])  # already stored: no change
    for user in ("u", "v"):
        kept, counted = statistics(database, "t", user)
        assert kept == counted and kept is not None
    assert statistics(database, "t", "u")[0] == (len(mine), statistics(database, "t", "u")[1][1])  # type: ignore[index]
    # An edit (upsert of an existing id, with more words) and a new id in one statement; a delete.
    store.upsert(
        [
            MemoryItem("t", "u", TARGET + " Bring rosin, spare strings and the folding stand.", ts=1.0, id=mine[-1].id),
            MemoryItem("t", "u", "A brand new line", ts=2.0),
        ],
        unit(2, 5),
    )
    store.delete("t", "u", [mine[0].id])
    kept, counted = statistics(database, "t", "u")
    assert kept == counted and kept is not None and kept[0] == len(mine)
    # Forget: the user's row goes with the items; another user's stays as it was.
    before_v = statistics(database, "t", "v")
    store.delete_user("t", "u")
    assert statistics(database, "t", "u") == (None, None)
    assert statistics(database, "t", "v") == before_v
    assert index.search("t", "u", QUESTION, 5) == []


def test_neighbours_on_postgres(store: PgVectorStore, index: PgLexicalIndex) -> None:
    chat = put(store, "t", "u", ["before it", TARGET, "after it"], conversation_id="c")
    put(store, "t", "u", ["another chat"], conversation_id="d")
    put(store, "t", "v", ["someone else"], conversation_id="c")
    around = index.neighbours("t", "u", [chat[1]], 1800.0)[chat[1].id]
    assert [it.text for it in around] == ["before it", "after it"]
    loose = [MemoryItem("t", "w", text, ts=ts) for text, ts in (("a", 10.0), ("b", 100.0), ("c", 100_000.0))]
    store.add(loose, unit(3, 4))
    assert [it.text for it in index.neighbours("t", "w", [loose[1]], 600.0)[loose[1].id]] == ["a"]


def test_migration_fills_the_lexemes_of_rows_written_before_it(database: Database) -> None:
    # A table at version 1 (before full-text search) holding a row, then the store opened on it.
    migrate(database, Schema(SCHEMA.component, SCHEMA.store, SCHEMA.migrations[:1]))
    with database.write() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {TABLE} (tenant, user_id, id, text, role, ts, source, embedding) "
                "VALUES ('t', 'u', 'old', :text, 'user', 1.0, 'exchange', CAST(:v AS vector))"
            ),
            {"text": TARGET, "v": vector_literal(unit(1, 1)[0])},
        )
    ensure(database, SCHEMA)
    store = PgVectorStore(database, DIM)
    assert [h.id for h in PgLexicalIndex(database, TABLE).search("t", "u", "Thaddeus", 5)] == ["old"]
    with database.read() as conn:
        indexes = set(conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :t"), {"t": TABLE}).scalars())
    assert "memory_items_lexemes" in indexes
    kept, counted = statistics(database, "t", "u")
    assert kept == counted and kept is not None and kept[0] == 1
    store.close()


@pytest.mark.parametrize("backend", ["embedded", "postgres"])
def test_lexical_through_the_server_switches_and_reports(
    backend: str, make_rapport: Any, scripted_upstream: Any, request: pytest.FixtureRequest
) -> None:
    extra: dict[str, Any] = {}
    if backend == "postgres":
        extra["database_url"] = request.getfixturevalue("postgres_url")
    h = make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000}, **extra)
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    before, after = "We talked about what to practise this week.", "I will pass the message on tomorrow."
    for text in [*DISTRACTORS, before, TARGET, after]:
        say(client, "alice", text, conversation="lesson")
    with admin(h) as a:
        wait_until(lambda: total(a, "alice") == len(DISTRACTORS) + 3)

    # Dense alone ranks the account turns first; the name is found only lexically.
    dense, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, lexical=False, neighbours=False)
    assert "Thaddeus" not in dense
    assert detail["lexical"] is False and detail["lexical_rank"] is None and detail["lexical_matches"] == 0

    hybrid, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, neighbours=False)  # the default
    assert TARGET in hybrid and detail["lexical"] is True and detail["lexical_matches"] >= 1
    assert detail["lexical_rank"] == "bm25"

    _, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, neighbours=False, lexical_rank="ts_rank_cd")
    # PostgreSQL offers ts_rank_cd; the embedded FTS5 index ranks by bm25 only, and says so.
    assert detail["lexical_rank"] == ("ts_rank_cd" if backend == "postgres" else "bm25")

    # Neighbours come from the same index on both backends.
    system, detail = ask(client, scripted_upstream, "alice", QUESTION, k=1, budget=1000)
    assert detail["neighbours"] == 2 and system.index(before) < system.index(TARGET) < system.index(after)

    # Another user of the tenant, and the same user name in another tenant, get none of alice's words.
    for key, user in ((h.api_key, "bob"), (h.api_key_b, "alice")):
        other = openai.OpenAI(base_url=h.base_url, api_key=key)
        system, detail = ask(other, scripted_upstream, user, QUESTION, k=3)
        assert "Thaddeus" not in system and detail["lexical_matches"] == 0

    # A bad rank is a 400 naming the field.
    with pytest.raises(openai.BadRequestError) as bad:
        ask(client, scripted_upstream, "alice", QUESTION, lexical_rank="tf-idf")
    assert "rapport.memory.lexical_rank" in str(bad.value)

    # Forget: nothing of alice matches lexically any more.
    with admin(h) as a:
        assert a.delete("/admin/users/alice", params={"tenant": "tenant-a"}).status_code == 200
    system, detail = ask(client, scripted_upstream, "alice", QUESTION, k=3)
    assert "Thaddeus" not in system and detail["lexical_matches"] == 0
    if backend == "postgres":
        db = Database.postgres(extra["database_url"])
        try:
            assert PgLexicalIndex(db, TABLE).search("tenant-a", "alice", QUESTION, 20) == []
        finally:
            db.close()
