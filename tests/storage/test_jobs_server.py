"""A real Rapport server with `database_url` set: its job queue lives in PostgreSQL, nothing of it in the data dir."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from memory.job_schema import jobs
from rapport import NotFoundError, Rapport
from rapport.core.database import Database
from tests.memory.test_proxy import MEMORY_ONLY, TENANT
from tests.support.helpers import wait_until
from tests.support.upstream import Reply


def job_rows(url: str, user: str) -> list[dict[str, Any]]:
    db = Database.open(url)
    try:
        with db.read() as conn:
            rows = conn.execute(sa.select(jobs).where(jobs.c.user == user)).mappings().all()
            return [dict(row) for row in rows]
    finally:
        db.close()


def test_summary_jobs_of_a_server_run_through_postgres(
    make_rapport: Any, scripted_upstream: Any, postgres_url: str, tmp_path: Any
) -> None:
    data_dir = tmp_path / "replica"
    h = make_rapport(
        plugins=MEMORY_ONLY,
        data_dir=data_dir,
        database_url=postgres_url,
        database={"job_lease_s": 2.0, "replica_id": "replica-1"},
        memory={"summary_every": 1000},
    )
    rp = Rapport(h.url + "/v1", api_key=h.api_key, admin_key=h.admin_key, tenant=TENANT)
    chat = rp.openai(user="sam")
    chat.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "I am a night owl who codes in OCaml."}]
    )

    def recorded() -> bool:
        try:
            return bool(rp.memories.list("sam").data)
        except NotFoundError:  # the exchange is recorded after the response: not yet
            return False

    wait_until(recorded)
    scripted_upstream.script(Reply(content="Sam is a night owl and codes in OCaml."))
    [job_id] = rp.summaries.regenerate("sam")
    job = rp.jobs.wait(job_id, timeout=60, interval=0.05)
    assert job.status == "succeeded"
    assert rp.summaries.list("sam")[0].text == "Sam is a night owl and codes in OCaml."

    [row] = job_rows(postgres_url, "sam")
    assert row["id"] == job_id and row["status"] == "succeeded" and row["tenant"] == TENANT
    assert row["owner"] is None and row["lease_token"] is None  # settled: the lease is given up
    assert not (data_dir / "jobs.sqlite3").exists()

    assert rp.users.forget("sam").removed["jobs"] == 1
    assert job_rows(postgres_url, "sam") == []
