"""Two real Rapport servers on one PostgreSQL (`database_url`): keys and the memory catalog are shared, nothing
of them is in either data dir."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rapport import NotFoundError, Rapport
from rapport.core.database import Database
from tests.memory.test_proxy import MEMORY_ONLY, TENANT
from tests.support.helpers import wait_until
from tests.support.upstream import Reply

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def replica(make_rapport: Any, postgres_url: str, tmp_path: Any, name: str) -> Any:
    return make_rapport(
        plugins=MEMORY_ONLY,
        data_dir=tmp_path / name,
        database_url=postgres_url,
        database={"replica_id": name},
        memory={"summary_every": 1000},
    )


def test_two_replicas_share_keys_and_the_catalog(
    make_rapport: Any, scripted_upstream: Any, postgres_url: str, tmp_path: Any
) -> None:
    a = replica(make_rapport, postgres_url, tmp_path, "a")
    b = replica(make_rapport, postgres_url, tmp_path, "b")

    # A key created on A authenticates on B, bound to its user; a revoke on A reaches B within the lookup TTL.
    plain, key = a.services.keys.create("shared", tenant=TENANT, user="sam")
    with httpx.Client(base_url=b.base_url, timeout=30) as client:
        headers = {"authorization": f"Bearer {plain}"}
        assert client.post("/chat/completions", json=CHAT, headers=headers).status_code == 200
        assert a.services.keys.revoke(key.key_id)
        wait_until(lambda: client.post("/chat/completions", json=CHAT, headers=headers).status_code == 401, within=20)

    # The catalog: a user recorded through A is listed by B; a summary written on A is read on B.
    rp_a = Rapport(a.url + "/v1", api_key=a.api_key, admin_key=a.admin_key, tenant=TENANT)
    rp_b = Rapport(b.url + "/v1", api_key=b.api_key, admin_key=b.admin_key, tenant=TENANT)
    rp_a.openai(user="robin").chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "I am allergic to peanuts."}]
    )

    def listed_on_b() -> bool:
        return any(u.user == "robin" for u in rp_b.users.list().data)

    wait_until(listed_on_b, within=30)
    scripted_upstream.script(Reply(content="Robin is allergic to peanuts."))
    [job_id] = rp_a.summaries.regenerate("robin")
    assert rp_a.jobs.wait(job_id, timeout=60, interval=0.05).status == "succeeded"
    assert [s.text for s in rp_b.summaries.list("robin")] == ["Robin is allergic to peanuts."]

    # Forget on B: A has nothing of the user at once (no replica keeps a cached summary).
    removed = rp_b.users.forget("robin").removed
    assert removed["memory"]["summaries"] == 1
    with pytest.raises(NotFoundError):
        rp_a.users.get("robin")
    assert not any(u.user == "robin" for u in rp_a.users.list().data)

    for handle in (a, b):
        assert not (handle.settings.data_dir / "keys.sqlite3").exists()
        assert not (handle.settings.data_dir / "memory" / "catalog.sqlite3").exists()


def test_a_key_lookup_waiting_on_the_database_does_not_stall_other_requests(
    make_rapport: Any, postgres_url: str, tmp_path: Any
) -> None:
    server = make_rapport(plugins=(), data_dir=tmp_path / "r", database_url=postgres_url)
    locker = Database.postgres(postgres_url)
    outcome: list[int] = []
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            with locker.write() as conn:
                # Every read of api_keys now waits for this transaction: a lookup that reaches the database hangs.
                conn.execute(sa.text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
                waiting = threading.Thread(
                    target=lambda: outcome.append(
                        client.post("/chat/completions", json=CHAT, headers={"authorization": "Bearer rk-unknown"}).status_code
                    )
                )
                waiting.start()
                wait_until(lambda: lock_waiters(locker) > 0, within=20)
                # A config key needs no query: it is answered while the other lookup waits (a lookup run on the
                # event loop would hold every request behind it).
                started = time.monotonic()
                ok = client.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {server.api_key}"})
                assert ok.status_code == 200 and time.monotonic() - started < 10
                assert not outcome, "the waiting lookup answered before the lock was released"
            waiting.join(timeout=30)
            assert outcome == [401]
    finally:
        locker.close()


def lock_waiters(db: Database) -> int:
    with db.read() as conn:
        return int(
            conn.execute(
                sa.text("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
            ).scalar_one()
        )


def test_a_failing_key_store_answers_503_and_recovers_without_a_restart(
    make_rapport: Any, postgres_url: str, tmp_path: Any
) -> None:
    server = make_rapport(plugins=(), data_dir=tmp_path / "r", database_url=postgres_url)
    plain, _ = server.services.keys.create("stored", tenant=TENANT)
    admin = Database.postgres(postgres_url)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            with admin.write() as conn:
                conn.execute(sa.text("ALTER TABLE api_keys RENAME TO api_keys_away"))
            for key in ("rk-never-seen-1", "rk-never-seen-2"):
                response = client.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "service_unavailable"
            with admin.write() as conn:
                conn.execute(sa.text("ALTER TABLE api_keys_away RENAME TO api_keys"))
            assert client.post("/chat/completions", json=CHAT, headers={"authorization": "Bearer rk-never-seen-3"}).status_code == 401
            stored = client.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {plain}"})
            assert stored.status_code == 200
    finally:
        admin.close()
