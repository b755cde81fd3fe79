"""A forget that races in-flight recordings leaves nothing (issue 12, point 4; memory/generations.py).

An exchange is recorded after its response. Here 50 chat requests of one user are all past retrieval (held by
the scripted upstream), then released together; while their recordings are on their way (being embedded,
queued in the ingest writer, committing) the user is forgotten, on the other replica (two real Rapport servers
on one real PostgreSQL) or on the same one (the embedded default: staging journal + Chroma). Once every
recording has settled (the servers' in-flight recordings, not a sleep), the user has no items, no catalog row
and no summary, and the next prompt on either replica injects nothing of them. Repeated: a race shows up in
one run of several. Without the generation check the late recordings wrote the user back (items and catalog
row) in most rounds.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from memory.catalog import Catalog
from memory.catalog_schema import forget_generations, summaries, users
from memory.service import MemoryService
from memory.staging import StagedStore
from rapport.core.database import Database
from tests.storage.test_memory_shared import (
    MEMORY_ONLY,
    TENANT,
    chat,
    no_5xx,
    prompt_for,
    replica,
    rows_of,
    texts,
)
from tests.support.helpers import admin, wait_until
from tests.support.postgres import Backend
from tests.support.upstream import Reply

REQUESTS = 50
ROUNDS = 5


def fact(user: str, i: int) -> str:
    return f"{user} note {i}: my locker code is {1000 + i} and I collect tin robots."


def service_of(handle: Any) -> MemoryService:
    return next(p.service for p in handle.services.plugins if getattr(p, "name", "") == "memory")


def start_chats(pool: ThreadPoolExecutor, h: Any, user: str) -> list[Future[httpx.Response]]:
    return [
        pool.submit(
            httpx.post,
            f"{h.base_url}/chat/completions",
            headers={"authorization": f"Bearer {h.api_key}", "x-rapport-user": user},
            json={"model": "test-model", "messages": [{"role": "user", "content": fact(user, i)}]},
            timeout=120,
        )
        for i in range(REQUESTS)
    ]


def held(upstream: Any, user: str) -> int:
    return sum(1 for r in list(upstream.requests) if f"{user} note " in str(r.json.get("messages", [])[-1:]))


def race(h: Any, upstream: Any, user: str, stored_so_far: Any | None, forget: Any) -> dict[str, Any]:
    """Hold REQUESTS chats of `user` at the upstream, release them, forget while their recordings land."""
    upstream.script(*[Reply(kind="hang") for _ in range(REQUESTS)])
    loop = upstream._server.loop
    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        answers = start_chats(pool, h, user)
        try:
            # Every request is past retrieval: its forget generation is read, its recording still to come.
            wait_until(lambda: held(upstream, user) == REQUESTS, within=120)
            loop.call_soon_threadsafe(upstream.release.set)
            # The forget lands in the middle: after the first recordings were stored (others still on their
            # way), or at once, while every recording is still to come.
            if stored_so_far is not None:
                wait_until(stored_so_far, within=60)
            removed = forget()
        finally:
            loop.call_soon_threadsafe(upstream.release.set)
            responses = [a.result(timeout=120) for a in answers]
            loop.call_soon_threadsafe(upstream.release.clear)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:1]
    # Settled: no recording of the user is in flight on the replica that served them.
    wait_until(lambda: h.services.recordings.count((TENANT, user)) == 0, within=60)
    return removed  # type: ignore[no-any-return]


def catalog_rows(db: Database, user: str) -> int:
    with db.read() as conn:
        n = 0
        for table in (users, summaries):
            n += int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(table.c.tenant == TENANT, table.c.user == user)
                ).scalar_one()
            )
        return n


def assert_injects_nothing(handles: list[Any], upstream: Any, user: str) -> None:
    for n, h in enumerate(handles):
        asked = f"What do you know about me? (probe {n})"
        chat(h, user, asked, record=False)
        seen = prompt_for(upstream, asked)
        assert "locker code" not in seen and "tin robots" not in seen, seen


def assert_new_exchanges_are_recorded(h: Any, client: httpx.Client, user: str) -> None:
    """The generation stops only what began before the forget: the user's next exchange is stored."""
    after = "A fresh start: I have just taken up rowing."
    chat(h, user, after)
    assert wait_until(lambda: texts(client, user), within=60) == [after]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_forget_on_b_racing_50_recordings_on_a_leaves_nothing(
    postgres_url: str, make_rapport: Any, scripted_upstream: Any, tmp_path: Path, round_: int
) -> None:
    a_srv, b_srv = (replica(make_rapport, postgres_url, tmp_path / name) for name in ("replica-a", "replica-b"))
    user = f"racer-{round_}"
    db = Database.open(postgres_url)
    try:
        with admin(a_srv) as a, admin(b_srv) as b:
            dropped_before = service_of(a_srv).dropped_after_forget

            def forget() -> dict[str, Any]:
                r = no_5xx(b.delete(f"/admin/users/{user}", params={"tenant": TENANT}))
                assert r.status_code == 200, r.text
                return r.json()["removed"]["memory"]  # type: ignore[no-any-return]

            committed = service_of(a_srv).writer.items
            # Even rounds: the forget is sent once A has committed its first batch of recordings.
            first_batch = (lambda: service_of(a_srv).writer.items > committed) if round_ % 2 == 0 else None
            removed = race(a_srv, scripted_upstream, user, first_batch, forget)
            if first_batch is not None:
                assert removed["items"] > 0  # the forget did land among the recordings
            assert rows_of(postgres_url, user) == 0
            assert catalog_rows(db, user) == 0
            for client in (a, b):
                assert texts(client, user) == []
                assert no_5xx(client.get(f"/admin/users/{user}", params={"tenant": TENANT})).status_code == 404
            assert_injects_nothing([a_srv, b_srv], scripted_upstream, user)
            # The late recordings were stopped by the check, counted (not raised to any client).
            late = service_of(a_srv).dropped_after_forget - dropped_before
            print(f"round {round_}: forget removed {removed['items']} items; {late} late writes dropped")
            assert_new_exchanges_are_recorded(b_srv, a, user)
    finally:
        db.close()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_forget_racing_50_recordings_on_the_embedded_default_leaves_nothing(
    make_rapport: Any, scripted_upstream: Any, tmp_path: Path, round_: int
) -> None:
    h = make_rapport(plugins=MEMORY_ONLY, data_dir=tmp_path / "embedded", memory={"summary_every": 1000})
    service = service_of(h)
    store = service.store
    assert isinstance(store, StagedStore)
    user = f"racer-{round_}"
    with admin(h) as a:
        dropped_before = service.dropped_after_forget

        def forget() -> dict[str, Any]:
            r = no_5xx(a.delete(f"/admin/users/{user}", params={"tenant": TENANT}))
            assert r.status_code == 200, r.text
            return r.json()["removed"]["memory"]  # type: ignore[no-any-return]

        committed = service.writer.items
        # Even rounds: the forget is sent once the first batch of recordings has been committed (staged).
        first_batch = (lambda: service.writer.items > committed) if round_ % 2 == 0 else None
        removed = race(h, scripted_upstream, user, first_batch, forget)
        if first_batch is not None:
            assert removed["items"] > 0
        # Whatever is staged reaches Chroma now: nothing of the user may be among it.
        assert store.flush(timeout_s=60)
        assert store.inner.count(TENANT, user) == 0
        assert not store.inner.collection_exists(TENANT, user)
        assert service.catalog.raw_rows(TENANT, user) == 0
        assert texts(a, user) == []
        assert no_5xx(a.get(f"/admin/users/{user}", params={"tenant": TENANT})).status_code == 404
        assert_injects_nothing([h], scripted_upstream, user)
        late = service.dropped_after_forget - dropped_before
        print(f"round {round_}: forget removed {removed['items']} items; {late} late writes dropped")
        assert_new_exchanges_are_recorded(h, a, user)


def test_catalog_writes_begun_before_a_forget_write_nothing(storage: Backend) -> None:
    """On both backends, two catalogs (two replicas): a touch or a summary begun under the generation read before
    a forget writes nothing, even once a new exchange has recreated the user; one begun after it is written."""
    a, b = Catalog(storage.open()), Catalog(storage.open())
    key = ("t", "uma")
    a.touch_many({key: 2})
    before = a.generations.current(*key)
    assert b.generations.bump(*key) == before + 1
    b.forget(*key)
    # A recording begun before the forget does not bring the user's row back.
    assert a.touch_many({key: 1}, generations={key: before}) == []
    assert a.user(*key) is None
    # A new exchange after the forget is recorded; a summary job that read its items before the forget is not.
    after = a.generations.current(*key)
    [record] = a.touch_many({key: 1}, generations={key: after})
    assert record.items == 1
    with pytest.raises(LookupError, match="forgotten"):
        a.add_summary(*key, "general", "of forgotten items", 2, None, generation=before)
    assert a.summaries(*key) == []
    assert a.add_summary(*key, "general", "of new items", 1, None, generation=after).version == 1
    # The row that outlives the forget names no one.
    with storage.open().read() as conn:
        stored = [str(k) for k in conn.execute(sa.select(forget_generations.c.user_key)).scalars()]
    assert stored and not any("uma" in k for k in stored)
