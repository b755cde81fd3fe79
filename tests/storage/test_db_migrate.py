"""`rapport db migrate --from DATA_DIR`, end to end: an embedded data dir written by today's code through a real
Rapport server (chats of two users in two tenants, an imported summary, an RPM history built in cheap mode, a VAS
profile, a stored response, a key, a pending job, and an item a crash left in the staging journal), copied by the
real CLI (a subprocess) into a fresh PostgreSQL: every count equal, the same top-k memory search before (embedded)
and after (a Rapport server on the database), a second run that duplicates nothing, and a server on PostgreSQL
that serves the migrated key and the user's memory."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from memory.items import MemoryItem
from memory.jobs import JobQueue
from memory.pg_store import TABLE as MEMORY_TABLE
from memory.store import ChromaStore
from memory.summaries import SUMMARY_JOB
from rapport.core import forget_log
from rapport.core.database import Database
from rapport.core.migrations import migrate as migrate_schema
from rapport.core.userdata import user_digest
from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply

TENANT_A, TENANT_B = "tenant-a", "tenant-b"  # the tenants of the two test API keys
MODEL = "test-model"
ALICE = [
    "I am allergic to peanuts, please keep that in mind.",
    "My favourite cuisine is Japanese, especially ramen.",
    "I cycle to work every day, about 12 km.",
    "I live in Lyon with my two cats.",
]
BOB = ["I am learning to play the cello.", "I work night shifts as a nurse."]
QUERY = "what food should I avoid and what do I like to eat"
PATH = '{"reasoning": "They rate seafood places highly, so 5."}'
HISTORY = [{"input": "Rate: Blue Fin, a seafood restaurant.", "response": "5", "task": "rating"}]
# Journaled but not yet in Chroma when the server died: the migration must flush it, not lose it.
CRASH_TEXT = "I keep bees on my roof terrace."
PASSWORD = "s3cret-migrate-pw"
# SQLite file, its table, the PostgreSQL table, and which source rows count (jobs: the active ones).
SQL_COUNTS = (
    ("keys.sqlite3", "api_keys", "api_keys", ""),
    ("memory/catalog.sqlite3", "users", "users", ""),
    ("memory/catalog.sqlite3", "summaries", "summaries", ""),
    ("jobs.sqlite3", "jobs", "jobs", " WHERE status IN ('pending', 'running')"),
    ("rpm/rpm.sqlite3", "entries", "rpm_entries", ""),
    ("rpm/rpm.sqlite3", "features", "rpm_features", ""),
    ("rpm/rpm.sqlite3", "factors", "rpm_factors", ""),
    ("rpm/rpm.sqlite3", "paths", "rpm_paths", ""),
    ("rpm/rpm.sqlite3", "builds", "rpm_builds", ""),
    ("vas/vas.sqlite3", "vas_profiles", "vas_profiles", ""),
    ("responses.sqlite3", "responses", "responses", ""),
    ("jobs.sqlite3", "rapport_forget_log", "rapport_forget_log", ""),
)
# A user forgotten on the embedded server: only the forget log keeps a row of them, and it must move too.
FORGOTTEN = "dave"



def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()


def chat(h: Any, key: str, user: str, text: str, *, record: bool = True) -> None:
    client = openai.OpenAI(base_url=h.base_url, api_key=key, max_retries=0)
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], user=user,
        extra_body={"rapport": {"record": record}},
    )


def memories(client: httpx.Client, tenant: str, user: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/admin/users/{user}/memories", params={"tenant": tenant, "limit": 1000, **params})
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def top_k(client: httpx.Client, tenant: str, user: str) -> list[str]:
    return [m["id"] for m in memories(client, tenant, user, q=QUERY, limit=3)]


def plugin(h: Any, name: str) -> Any:
    [found] = [p for p in h.services.plugins if p.name == name]
    return found


def migrate(data_dir: Path, url: str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    env.update(RAPPORT_DATA_DIR=str(tmp_path / "cli-data"), COLUMNS="160", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               LITELLM_LOCAL_MODEL_COST_MAP="True")
    if url is not None:
        env["RAPPORT_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "db", "migrate", "--from", str(data_dir)],
        env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )


def source_counts(data_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for file, table, target, where in SQL_COUNTS:
        with sqlite3.connect(data_dir / file) as conn:
            counts[target] = int(conn.execute(f"SELECT count(*) FROM {table}{where}").fetchone()[0])
    chroma = ChromaStore(path=data_dir / "memory" / "chroma")
    counts[MEMORY_TABLE] = sum(int(c.count()) for c in chroma.client.list_collections())
    return counts


def target_counts(url: str) -> dict[str, int]:
    db = Database.open(url)
    try:
        with db.read() as conn:
            return {
                target: int(conn.execute(sa.text(f"SELECT count(*) FROM {target}")).scalar_one())
                for target in [*(t for _, _, t, _ in SQL_COUNTS), MEMORY_TABLE]
            }
    finally:
        db.close()


def memory_per_user(url: str) -> dict[tuple[str, str], int]:
    db = Database.open(url)
    try:
        with db.read() as conn:
            rows = conn.execute(sa.text(f"SELECT tenant, user_id, count(*) FROM {MEMORY_TABLE} GROUP BY 1, 2"))
            return {(str(t), str(u)): int(n) for t, u, n in rows}
    finally:
        db.close()


def journal_crash_item(data_dir: Path, item: MemoryItem, vector: np.ndarray) -> None:
    """What a server killed before its flusher ran leaves: the acknowledged item in the staging journal only."""
    with sqlite3.connect(data_dir / "memory" / "journal.sqlite3") as conn:
        conn.execute(
            "INSERT INTO journal (tenant, user, id, document, metadata, vector) VALUES (?,?,?,?,?,?)",
            (item.tenant, item.user, item.id, item.text, json.dumps(item.metadata()),
             np.asarray(vector, dtype=np.float32).tobytes()),
        )


def enqueue_pending_job(data_dir: Path) -> str:
    """A summary job queued while no worker runs (the queue is never started): it stays pending."""

    async def go() -> str:
        queue = JobQueue(data_dir / "jobs.sqlite3")
        try:
            return await queue.enqueue(SUMMARY_JOB, {"task": "general"}, tenant=TENANT_A, user="alice")
        finally:
            await queue.close()

    return asyncio.run(go())


def build_embedded(make_rapport: Any, scripted_upstream: Any, data_dir: Path) -> dict[str, Any]:
    h = make_rapport(data_dir=data_dir, rpm={"construction_mode": "cheap"}, memory={"summary_every": 1000})
    seen: dict[str, Any] = {"server": h}
    with admin(h) as client:
        scripted_upstream.script(Reply(content=PATH))
        rpm = f"/admin/users/alice/rpm?tenant={TENANT_A}"
        assert ok(client.post(f"/admin/users/alice/history?tenant={TENANT_A}", json={"items": HISTORY}))["imported"] == 1
        wait_until(lambda: ok(client.get(rpm))["entries"] == {"done": 1}, within=60)
        for text in ALICE:
            chat(h, h.api_key, "alice", text)
        for text in BOB:
            chat(h, h.api_key_b, "bob", text)
        summary = {"task": "general", "version": 1, "text": "Allergic to peanuts; likes ramen.", "item_count": 2}
        assert ok(client.post(f"/admin/users/alice/import?tenant={TENANT_A}", json={"summaries": [summary]}))[
            "summaries"] == 1
        plugin(h, "vas").engine.store.put(TENANT_A, "alice", {"sentiment": 0.5}, 2.0)
        scripted_upstream.script(Reply(content="Noted."))
        response = openai.OpenAI(base_url=h.base_url, api_key=h.api_key, max_retries=0,
                                 default_headers={"X-Rapport-User": "alice"}).responses.create(
            model=MODEL, input="Remember my order.")
        seen["response_id"] = response.id
        # The /v1/responses input is recorded as alice's memory too.
        wait_until(lambda: len(memories(client, TENANT_A, "alice")) == len(ALICE) + 1, within=60)
        wait_until(lambda: len(memories(client, TENANT_B, "bob")) == len(BOB), within=60)
        chat(h, h.api_key, FORGOTTEN, "I collect vintage typewriters.")
        wait_until(lambda: memories(client, TENANT_A, FORGOTTEN), within=60)
        assert client.delete(f"/admin/users/{FORGOTTEN}", params={"tenant": TENANT_A}).status_code == 200
        seen["key"], _ = h.services.keys.create(name="migrated", tenant=TENANT_A)
        seen["before_alice"] = top_k(client, TENANT_A, "alice")
        seen["before_bob"] = top_k(client, TENANT_B, "bob")
        seen["alice_ids"] = sorted(m["id"] for m in memories(client, TENANT_A, "alice"))
    crash = MemoryItem(tenant=TENANT_A, user="carol", text=CRASH_TEXT)
    # The model and runtime the server ingests with (its background embedder), as the server would have.
    vectors = asyncio.run(plugin(h, "memory").service.embedder.embed_background([CRASH_TEXT]))
    seen["crash"] = (crash, vectors[0])
    return seen


def test_migrate_copies_an_embedded_data_dir_into_postgres(
    postgres_url: str, make_rapport: Any, scripted_upstream: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "embedded"
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    seen = build_embedded(make_rapport, scripted_upstream, data_dir)
    assert len(seen["before_alice"]) == 3 and len(seen["before_bob"]) == 2

    # While the server holds the data dir: refused, nothing copied.
    busy = migrate(data_dir, url, tmp_path)
    assert busy.returncode == 1 and "another Rapport server" in busy.stderr, busy.stderr
    assert target_counts_or_none(url) is None

    seen["server"].stop()
    crash, vector = seen["crash"]
    journal_crash_item(data_dir, crash, vector)
    job_id = enqueue_pending_job(data_dir)

    unset = migrate(data_dir, None, tmp_path)
    assert unset.returncode == 2 and "database_url" in unset.stderr, unset.stderr

    first = migrate(data_dir, url, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert PASSWORD not in first.stdout + first.stderr
    assert "0 with a count that differs" in first.stdout, first.stdout
    source = source_counts(data_dir)  # after the run: the journal item is now in Chroma too
    assert source[MEMORY_TABLE] == len(ALICE) + 1 + len(BOB) + 1
    assert all(source[t] > 0 for t in source), source
    after = target_counts(url)
    assert after == source
    per_user = memory_per_user(url)
    assert per_user == {(TENANT_A, "alice"): len(ALICE) + 1, (TENANT_B, "bob"): len(BOB), (TENANT_A, "carol"): 1}

    db = Database.open(url)
    try:
        with db.read() as conn:
            status = conn.execute(sa.text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
    finally:
        db.close()
    assert status == "pending"

    # A second run copies nothing twice.
    second = migrate(data_dir, url, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert target_counts(url) == after and memory_per_user(url) == per_user
    assert len(rows_copied(first.stdout)) == 14  # every store has its row in the table
    assert rows_copied(first.stdout)["forget log"] == 1
    assert rows_copied(second.stdout) == {label: 0 for label in rows_copied(first.stdout)}
    assert rows_copied(first.stdout)["memory items"] == source[MEMORY_TABLE]

    # Resumable: a run cut short left part of the stores behind; the next one copies exactly what is missing.
    execute(url, f"DELETE FROM {MEMORY_TABLE} WHERE user_id = 'bob'", "DELETE FROM rpm_paths", "DELETE FROM responses")
    resumed = migrate(data_dir, url, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert target_counts(url) == after and memory_per_user(url) == per_user
    copied = rows_copied(resumed.stdout)
    assert (copied["memory items"], copied["rpm paths"], copied["responses"]) == (len(BOB), 1, 1)
    assert sum(copied.values()) == len(BOB) + 2

    # A key held by another user's row (ids from another data dir) is not this row: the counts differ, exit 1.
    execute(url, "UPDATE rpm_factors SET \"user\" = 'mallory'")
    clash = migrate(data_dir, url, tmp_path)
    assert clash.returncode == 1, clash.stdout + clash.stderr
    assert "DIFFERS" in clash.stdout and "1 with a count that differs" in clash.stdout, clash.stdout
    assert "alice" in clash.stdout.split("counts that differ")[1]
    execute(url, "UPDATE rpm_factors SET \"user\" = 'alice'")

    # A server on PostgreSQL: the same top-k, the migrated key, summaries, RPM, VAS, the stored response.
    pg = make_rapport(data_dir=tmp_path / "on-postgres", database_url=postgres_url, memory={"summary_every": 1000})
    with admin(pg) as client:
        assert top_k(client, TENANT_A, "alice") == seen["before_alice"]
        assert top_k(client, TENANT_B, "bob") == seen["before_bob"]
        assert sorted(m["id"] for m in memories(client, TENANT_A, "alice")) == seen["alice_ids"]
        assert [m["text"] for m in memories(client, TENANT_A, "carol")] == [CRASH_TEXT]
        # The migrated pending job runs here (it writes the next summary version over the migrated one).
        assert wait_until(lambda: ok(client.get(f"/admin/jobs/{job_id}"))["status"] == "succeeded", within=60)
        versions = [s["version"] for s in ok(client.get(f"/admin/users/alice/summaries?tenant={TENANT_A}"))["data"]]
        assert versions == [2, 1]
        assert ok(client.get(f"/admin/users/alice/rpm?tenant={TENANT_A}"))["entries"] == {"done": 1}
        assert len(ok(client.get(f"/admin/users/alice/rpm/paths?tenant={TENANT_A}"))["data"]) == 1
        assert ok(client.get("/admin/vas/users/alice", params={"tenant": TENANT_A}))["weights"] == {"sentiment": 0.5}
        # New RPM rows get ids after the copied ones (the identity sequence was moved past them).
        more = [{"input": "Rate: Green Leaf, a salad bar.", "response": "2", "task": "rating"}]
        assert ok(client.post(f"/admin/users/bob/history?tenant={TENANT_B}", json={"items": more}))["imported"] == 1
    on_pg = openai.OpenAI(base_url=pg.base_url, api_key=seen["key"], max_retries=0,
                          default_headers={"X-Rapport-User": "alice"})
    assert on_pg.responses.retrieve(seen["response_id"]).output_text == "Noted."
    asked = "Any snack ideas for my ride today?"
    chat(pg, seen["key"], "alice", asked, record=False)
    prompt = next(str(r.json["messages"]) for r in reversed(list(scripted_upstream.requests))
                  if r.json.get("messages") and r.json["messages"][-1].get("content") == asked)
    assert "peanuts" in prompt


def execute(url: str, *statements: str) -> None:
    db = Database.open(url)
    try:
        with db.write() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        db.close()


def rows_copied(stdout: str) -> dict[str, int]:
    """The CLI's table: store label -> rows this run inserted (the `copied` column)."""
    copied: dict[str, int] = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 7 and cells[3].isdigit():
            copied[cells[0]] = int(cells[3])
    return copied


def target_counts_or_none(url: str) -> dict[str, int] | None:
    """The target's counts, or None while it has no tables yet."""
    db = Database.open(url)
    try:
        with db.read() as conn:
            if not sa.inspect(conn).has_table("api_keys"):
                return None
    finally:
        db.close()
    return target_counts(url)


def test_migrate_copies_the_forget_log_beside_forgets_the_target_already_logged(
    postgres_url: str, tmp_path: Path
) -> None:
    """A database that replicas already served holds forgets of its own, under the same small ids as the data
    dir's: every forget of the data dir is still copied (by content, not id), once, and counted."""
    data_dir = tmp_path / "embedded"
    data_dir.mkdir()
    source = Database.sqlite(data_dir / "jobs.sqlite3")
    target = Database.open(postgres_url)
    try:
        migrate_schema(source, forget_log.SCHEMA)
        migrate_schema(target, forget_log.SCHEMA)
        forget_log.ForgetLog(target).append(TENANT_B, "zoe", at=50.0)  # id 1 in the target
        for user, at in (("dave", 100.0), ("erin", 200.0)):  # ids 1 and 2 in the data dir
            forget_log.ForgetLog(source).append(TENANT_A, user, at=at)
        source.close()

        first = migrate(data_dir, postgres_url, tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
        assert forget_rows_only(first.stdout) == 2
        assert "0 with a count that differs" in first.stdout, first.stdout
        logged = {(f.tenant, f.user_digest, f.forgotten_at) for f in forget_log.ForgetLog(target).since(0.0)}
        assert logged == {
            (TENANT_B, user_digest(TENANT_B, "zoe"), 50.0),
            (TENANT_A, user_digest(TENANT_A, "dave"), 100.0),
            (TENANT_A, user_digest(TENANT_A, "erin"), 200.0),
        }

        second = migrate(data_dir, postgres_url, tmp_path)
        assert second.returncode == 0 and forget_rows_only(second.stdout) == 0, second.stdout
        assert len(forget_log.ForgetLog(target).since(0.0)) == 3

        # A logged forget the target lost (a restore from before the copy) is found missing, and copied again.
        execute(postgres_url, "DELETE FROM rapport_forget_log WHERE forgotten_at = 200.0")
        resumed = migrate(data_dir, postgres_url, tmp_path)
        assert resumed.returncode == 0 and forget_rows_only(resumed.stdout) == 1, resumed.stdout
        assert len(forget_log.ForgetLog(target).since(0.0)) == 3
    finally:
        source.close()
        target.close()


def forget_rows_only(stdout: str) -> int:
    """Rows the run copied into the forget log, where it copied nothing else (the data dir holds only that)."""
    copied = rows_copied(stdout)
    assert sum(copied.values()) == copied["forget log"], copied
    return copied["forget log"]
