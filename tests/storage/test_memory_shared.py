"""Memory on the shared backend, end to end: two real Rapport servers (separate data dirs) on one real PostgreSQL.

What a user of two replicas behind a load balancer relies on: a chat recorded on replica A is listed, searched
and injected through replica B (within the recording delay: the exchange is stored after its response, so it
is polled for with a deadline); admin and import writes on one replica are visible on the other at once; a
forget on A (then again on B) leaves nothing of the user on either, in any part of the export, at once and 10 s
later; the data dirs hold nothing of memory. And PostgreSQL stopped while serving: /readyz 503, chat degraded or 503 per `degrade_on_store_failure`,
admin writes 503, an exchange that cannot be recorded counted in `rapport_recordings_lost_total` and dropped
(never buffered), and recovery once the server is back, without a restart.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from memory.config import MemorySettings
from memory.pg_store import TABLE, PgVectorStore
from memory.staging import StagedStore
from memory.store import ChromaStore
from memory.stores.choose import open_store
from rapport.core.database import Database
from rapport.core.userdata import is_empty
from tests.storage.test_userdata_registry import fill
from tests.support.helpers import admin, wait_until
from tests.support.postgres import PostgresServer
from tests.support.upstream import Reply

TENANT = "tenant-a"
MEMORY_ONLY = ("proxy.stages.memory_plugin:build",)
PREFERENCE = "Please remember that I keep kosher and never eat shellfish."
LOST = re.compile(r'^rapport_recordings_lost_total\{stage="memory"\} (\S+)$', re.M)
# A forgotten user is checked on both replicas at once and again this long after (issue 12: "immediately and
# 10 s later"). A fixed wait on purpose, not a synchronization: what it must show is that nothing cached, staged
# or recorded late brings the user back once the replicas have had that long.
FORGET_WATCH_S = 10.0
# What every replica registers in the user-data registry (the export document's sections) with the stages on.
PARTS = {"memory", "rpm", "vas", "responses"}


def replica(
    make_rapport: Any, url: str, data_dir: Path, plugins: tuple[str, ...] | None = MEMORY_ONLY, **overrides: Any
) -> Any:
    """A Rapport server on the shared database; `plugins=None` runs every default stage."""
    return make_rapport(
        plugins=plugins, data_dir=data_dir, database_url=url, memory={"summary_every": 1000}, **overrides
    )


def no_5xx(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500, response.text
    return response


def texts(client: httpx.Client, user: str, **params: Any) -> list[str]:
    r = no_5xx(client.get(f"/admin/users/{user}/memories", params={"tenant": TENANT, "limit": 1000, **params}))
    assert r.status_code == 200, r.text
    return [m["text"] for m in r.json()["data"]]


def chat(h: Any, user: str, text: str, *, record: bool = True) -> Any:
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key, max_retries=0)
    return client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": text}],
        user=user,
        extra_body={"rapport": {"record": record}},
    )


def prompt_for(upstream: Any, text: str) -> str:
    """What the upstream received before the user message `text` (the system message memory adds)."""
    for seen in reversed(list(upstream.requests)):
        messages = seen.json.get("messages") or []
        if messages and messages[-1].get("content") == text:
            return str(messages[:-1])
    raise AssertionError(f"the upstream never received {text!r}")


def memory_files(data_dir: Path) -> list[str]:
    """Files of memory under a data dir: everything memory keeps embedded lives under `memory/`."""
    return sorted(str(p.relative_to(data_dir)) for p in (data_dir / "memory").rglob("*")) if (
        data_dir / "memory"
    ).exists() else []


def rows_of(url: str, user: str) -> int:
    db = Database.open(url)
    try:
        with db.read() as conn:
            return int(
                conn.execute(
                    sa.text(f"SELECT count(*) FROM {TABLE} WHERE tenant = :t AND user_id = :u"), {"t": TENANT, "u": user}
                ).scalar_one()
            )
    finally:
        db.close()


def lost(client: httpx.Client) -> float:
    found = LOST.search(client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def test_two_replicas_share_memory_and_a_forget_on_one_empties_the_other(
    postgres_url: str, make_rapport: Any, scripted_upstream: Any, tmp_path: Path
) -> None:
    # postgres_url first: its database is dropped after the servers have stopped.
    dirs = [tmp_path / "replica-a", tmp_path / "replica-b"]
    # Every stage on: RPM, VAS and stored responses hold data of the user too, and the forget must reach them.
    a_srv, b_srv = (replica(make_rapport, postgres_url, d, plugins=None) for d in dirs)
    [memory_plugin] = [p for p in a_srv.services.plugins if p.name == "memory"]
    assert isinstance(memory_plugin.service.store, PgVectorStore)
    with admin(a_srv) as a, admin(b_srv) as b:
        # A chat recorded on A reaches B's admin API and B's next prompt.
        chat(a_srv, "sam", PREFERENCE)
        assert wait_until(lambda: texts(b, "sam"), within=30) == [PREFERENCE]
        assert texts(b, "sam", q="seafood allergy and dietary rules", limit=1) == [PREFERENCE]
        question = "What should I cook tonight?"
        chat(b_srv, "sam", question, record=False)
        assert "never eat shellfish" in prompt_for(scripted_upstream, question)

        # Admin and import writes: visible on the other replica at once (no polling).
        r = no_5xx(a.post("/admin/users/sam/memories", params={"tenant": TENANT}, json={"text": "I live in Porto."}))
        assert r.status_code == 201, r.text
        assert "I live in Porto." in texts(b, "sam")
        imported = {"items": [{"text": "I play the cello.", "role": "user", "ts": 1.0}]}
        r = no_5xx(b.post("/admin/users/sam/import", params={"tenant": TENANT}, json=imported))
        assert r.status_code == 201 and r.json()["items"] == 1, r.text
        assert "I play the cello." in texts(a, "sam")
        porto = next(m for m in b.get("/admin/users/sam/memories", params={"tenant": TENANT}).json()["data"]
                     if m["text"] == "I live in Porto.")  # fmt: skip
        r = no_5xx(b.patch(f"/admin/users/sam/memories/{porto['id']}", params={"tenant": TENANT},
                           json={"text": "I live in Lisbon."}))  # fmt: skip
        assert r.status_code == 200, r.text
        assert texts(a, "sam", q="which city is home", limit=1) == ["I live in Lisbon."]
        assert sorted(texts(a, "sam")) == sorted([PREFERENCE, "I live in Lisbon.", "I play the cello."])
        # Something of sam in every other part too (RPM history and feedback, a VAS profile, a stored response,
        # two more items and a summary), so each section of the export has something to lose.
        fill(a_srv, TENANT, "sam")
        doc = no_5xx(b.get("/admin/users/sam/export", params={"tenant": TENANT})).json()
        assert PARTS <= set(doc["parts"]) and not any(is_empty(doc["parts"][name]) for name in PARTS), doc["parts"]

        # Forget on A: nothing of sam on A or B, through any door, at once; then on B (nothing left to remove).
        r = no_5xx(a.delete("/admin/users/sam", params={"tenant": TENANT}))
        assert r.status_code == 200 and r.json()["removed"]["memory"]["items"] == 5, r.text
        assert PARTS <= set(r.json()["removed"]), r.text
        probes = iter(range(1, 1000))
        forgotten_everywhere(a_srv, a, b_srv, b, scripted_upstream, probes)
        r = no_5xx(b.delete("/admin/users/sam", params={"tenant": TENANT}))
        assert r.status_code == 200, r.text
        assert removed_anything(r.json()["removed"]) == [], r.text
        forgotten_everywhere(a_srv, a, b_srv, b, scripted_upstream, probes)
        # And 10 s later, still nothing on either replica.
        time.sleep(FORGET_WATCH_S)
        forgotten_everywhere(a_srv, a, b_srv, b, scripted_upstream, probes)
        assert rows_of(postgres_url, "sam") == 0
    for d in dirs:
        assert memory_files(d) == [], memory_files(d)


# Words of sam's data (the chats, the admin writes and what fill() put in every part).
SAM_WORDS = ("shellfish", "Lisbon", "cello", "bees", "Ines")


def removed_anything(removed: dict[str, Any]) -> list[str]:
    """What a forget's answer says it removed: `part.kind` (or a top-level count's name) for every count above 0."""
    found: list[str] = []
    for name, counts in removed.items():
        for kind, n in (counts.items() if isinstance(counts, dict) else [("", counts)]):
            if n:
                found.append(f"{name}.{kind}" if kind else name)
    return found


def registry_document(handle: Any, user: str) -> dict[str, Any]:
    """The export document straight from a replica's user-data registry, on that server's own loop: every
    section, even when all are empty (the HTTP export answers 404 then, which shows no section by itself)."""
    loop = handle.server.loop
    assert loop is not None
    future = asyncio.run_coroutine_threadsafe(handle.services.jobs.userdata.export(TENANT, user), loop)
    document: dict[str, Any] = future.result(timeout=60)
    return document


def forgotten_everywhere(
    a_srv: Any, a: httpx.Client, b_srv: Any, b: httpx.Client, upstream: Any, probes: Iterator[int]
) -> None:
    """Nothing of sam on either replica: listing, search, the export (every section of the document, and the
    HTTP export's 404), and the next prompt; no 5xx anywhere."""
    for client, handle in ((a, a_srv), (b, b_srv)):
        assert texts(client, "sam") == []
        assert texts(client, "sam", q="shellfish kosher Lisbon cello bees") == []
        assert no_5xx(client.get("/admin/users/sam/export", params={"tenant": TENANT})).status_code == 404
        document = registry_document(handle, "sam")
        assert document["format"] == "rapport.user.v2" and PARTS <= set(document["parts"]), document
        for name, section in document["parts"].items():
            assert is_empty(section), (name, section)
        asked = f"Any dinner ideas? ({next(probes)})"
        chat(handle, "sam", asked, record=False)  # a probe must not give sam new memory
        seen = prompt_for(upstream, asked)
        assert not any(word in seen for word in SAM_WORDS), seen


def test_open_store_without_a_shared_database_is_todays_embedded_store(tmp_path: Path, postgres_url: str) -> None:
    settings = MemorySettings()
    embedded = open_store(settings, tmp_path / "embedded" / "memory", shared_db=None, dim=None, migrate=True)
    try:
        assert isinstance(embedded, StagedStore) and isinstance(embedded.inner, ChromaStore)
    finally:
        embedded.close()
    assert (tmp_path / "embedded" / "memory" / "journal.sqlite3").exists()
    db = Database.open(postgres_url)
    try:
        shared = open_store(settings, tmp_path / "shared" / "memory", shared_db=db, dim=8, migrate=True)
        assert isinstance(shared, PgVectorStore) and shared.dim == 8
        shared.close()
    finally:
        db.close()
    assert not (tmp_path / "shared").exists()


@pytest.mark.parametrize("degrade", [True, False], ids=["degrade", "503"])
def test_postgres_down_while_serving_then_back_without_restart(
    postgres_server: PostgresServer, postgres_url: str, make_rapport: Any, scripted_upstream: Any, tmp_path: Path,
    degrade: bool,
) -> None:  # fmt: skip
    data_dir = tmp_path / "replica"
    h = replica(make_rapport, postgres_url, data_dir, degrade_on_store_failure=degrade)
    with admin(h, timeout=30) as a:
        chat(h, "ana", PREFERENCE)
        wait_until(lambda: texts(a, "ana"), within=30)
        assert a.get("/readyz").status_code == 200
        lost_before = lost(a)
        during = "During the outage: I just moved to Lisbon."
        with postgres_server.outage():
            ready = wait_until(lambda: (r := a.get("/readyz")).status_code == 503 and r, within=15)
            assert "unreachable" in ready.text, ready.text
            sent = httpx.post(
                f"{h.base_url}/chat/completions",
                headers={"authorization": f"Bearer {h.api_key}", "x-rapport-user": "ana"},
                json={"model": "test-model", "messages": [{"role": "user", "content": during}]},
                timeout=30,
            )
            if degrade:
                # Answered without personalization, and said so; the exchange is not recorded either: counted
                # as lost, not kept anywhere on the replica for later.
                assert sent.status_code == 200, sent.text
                assert "memory" in sent.headers["x-rapport-degraded"]
                assert lost(a) == lost_before + 1
            else:
                assert sent.status_code == 503, sent.text
                assert sent.json()["error"]["type"] == "server_error"
            for method, path, body in (
                ("POST", "/admin/users/ana/memories", {"text": "I own a bicycle."}),
                ("POST", "/admin/users/ana/import", {"items": [{"text": "I own a kayak.", "ts": 1.0}]}),
            ):
                r = a.request(method, path, params={"tenant": TENANT}, json=body)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "database_unavailable", r.text
            assert memory_files(data_dir) == []
        # Back: ready again on its own, writes and reads work, and what was refused or lost stays absent.
        wait_until(lambda: a.get("/readyz").status_code == 200, within=30)
        r = a.post("/admin/users/ana/memories", params={"tenant": TENANT}, json={"text": "I own a bicycle."})
        assert r.status_code == 201, r.text
        after = "Where should I travel next?"
        reply = httpx.post(
            f"{h.base_url}/chat/completions",
            headers={"authorization": f"Bearer {h.api_key}", "x-rapport-user": "ana"},
            json={"model": "test-model", "messages": [{"role": "user", "content": after}]},
            timeout=30,
        )
        assert reply.status_code == 200 and "x-rapport-degraded" not in reply.headers, reply.text
        assert "never eat shellfish" in prompt_for(scripted_upstream, after)
        stored = wait_until(lambda: (t := texts(a, "ana")) and after in t and t, within=30)
        assert sorted(stored) == sorted([PREFERENCE, "I own a bicycle.", after])
        assert lost(a) == lost_before + (1 if degrade else 0)
    assert memory_files(data_dir) == []


def test_a_recording_that_fails_after_its_response_is_counted_and_dropped(
    postgres_server: PostgresServer, postgres_url: str, make_rapport: Any, scripted_upstream: Any, tmp_path: Path
) -> None:
    """The database goes down between a chat's retrieval and its recording (while the upstream answers)."""
    data_dir = tmp_path / "replica"
    h = replica(make_rapport, postgres_url, data_dir)
    upstream_loop = scripted_upstream._server.loop
    text = "I have just adopted a greyhound called Pixel."
    with admin(h, timeout=30) as a, ThreadPoolExecutor(max_workers=1) as pool:
        chat(h, "lea", PREFERENCE)
        wait_until(lambda: texts(a, "lea"), within=30)
        lost_before = lost(a)
        scripted_upstream.script(Reply(kind="hang"))
        answer = pool.submit(
            httpx.post,
            f"{h.base_url}/chat/completions",
            headers={"authorization": f"Bearer {h.api_key}", "x-rapport-user": "lea"},
            json={"model": "test-model", "messages": [{"role": "user", "content": text}]},
            timeout=60,
        )
        try:
            # Memory has run (the upstream holds the personalized request); now the database goes away.
            assert "never eat shellfish" in wait_until(lambda: _received(scripted_upstream, text), within=30)
            with postgres_server.outage():
                upstream_loop.call_soon_threadsafe(scripted_upstream.release.set)
                response = answer.result(timeout=60)
                assert response.status_code == 200 and "x-rapport-degraded" not in response.headers, response.text
                wait_until(lambda: lost(a) == lost_before + 1, within=30)
                assert memory_files(data_dir) == []
        finally:
            upstream_loop.call_soon_threadsafe(scripted_upstream.release.set)
            answer.result(timeout=60)
            upstream_loop.call_soon_threadsafe(scripted_upstream.release.clear)
        wait_until(lambda: a.get("/readyz").status_code == 200, within=30)
        # Later exchanges are recorded again; the lost one never comes back (nothing was kept to replay).
        chat(h, "lea", "I also keep bees.")
        wait_until(lambda: "I also keep bees." in texts(a, "lea"), within=30)
        assert sorted(texts(a, "lea")) == sorted([PREFERENCE, "I also keep bees."])
        assert lost(a) == lost_before + 1


def _received(upstream: Any, text: str) -> str | None:
    try:
        return prompt_for(upstream, text)
    except AssertionError:
        return None
