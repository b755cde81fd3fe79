"""The durable job queue: runs, retries, dedupes, survives a restart, forgets a user (on both backends)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from memory.job_schema import jobs
from memory.jobs import Job, JobQueue, Progress
from tests.support.postgres import Backend


async def test_job_runs_and_reports_progress(storage: Backend) -> None:
    queue = JobQueue(storage.open())
    seen: list[dict[str, object]] = []

    async def handler(job: Job, progress: Progress) -> None:
        await progress(0.5, "half")
        seen.append(job.payload)

    queue.register("demo", handler)
    await queue.start()
    try:
        job_id = await queue.enqueue("demo", {"x": 1}, tenant="t", user="u")
        job = await queue.wait(job_id, within=10)
        assert job is not None and job.status == "succeeded" and job.progress == 1.0
        assert job.owner is None and job.lease_expires_at is None
        assert seen == [{"x": 1}]
        jobs_, total = await queue.list(status="succeeded")
        assert total == 1 and jobs_[0].id == job_id
    finally:
        await queue.close()


async def test_retries_then_fails(storage: Backend) -> None:
    queue = JobQueue(storage.open(), max_attempts=3, retry_backoff_s=0.0, poll_interval_s=0.02)
    calls: list[int] = []

    async def flaky(job: Job, progress: Progress) -> None:
        calls.append(job.attempts)
        if job.payload["ok_at"] > job.attempts:
            raise RuntimeError("boom")

    queue.register("flaky", flaky)
    await queue.start()
    try:
        ok = await queue.enqueue("flaky", {"ok_at": 2}, tenant="t", user="u")
        done = await queue.wait(ok, within=10)
        assert done is not None and done.status == "succeeded" and done.attempts == 2
        bad = await queue.enqueue("flaky", {"ok_at": 99}, tenant="t", user="u")
        failed = await queue.wait(bad, within=10)
        assert failed is not None and failed.status == "failed" and failed.attempts == 3
        assert failed.error is not None and "boom" in failed.error
    finally:
        await queue.close()


async def test_dedupe_key_reuses_the_active_job(storage: Backend) -> None:
    queue = JobQueue(storage.open())
    a = await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key="summary:t:u")
    b = await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key="summary:t:u")
    c = await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key="other")
    assert a == b and a != c
    _, total = await queue.list()
    assert total == 2
    await queue.close()


async def test_dedupe_keys_and_messages_with_nul_bytes(storage: Backend) -> None:
    """The memory service separates its dedupe key's parts with NUL, which PostgreSQL's text cannot hold."""
    queue = JobQueue(storage.open(), poll_interval_s=0.02)

    async def handler(job: Job, progress: Progress) -> None:
        await progress(0.5, "step\x00one")

    queue.register("k", handler)
    key = "summary\x00t\x00u\x00general"
    a = await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key=key)
    assert await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key=key) == a
    assert await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key="summary\\0t\\0u\\0general") != a
    job = await queue.get(a)
    assert job is not None and job.dedupe_key == key
    await queue.start()
    try:
        done = await queue.wait(a, within=10)
        assert done is not None and done.status == "succeeded"
    finally:
        await queue.close()


async def test_enqueue_while_running_runs_the_job_once_more(storage: Backend) -> None:
    """New input during a run is not lost: the same job id runs again after the running attempt."""
    queue = JobQueue(storage.open(), poll_interval_s=0.02)
    started = asyncio.Event()
    release = asyncio.Event()
    runs: list[int] = []

    async def handler(job: Job, progress: Progress) -> None:
        runs.append(len(runs) + 1)
        started.set()
        if len(runs) == 1:
            await release.wait()

    queue.register("sum", handler)
    await queue.start()
    try:
        first = await queue.enqueue("sum", {}, tenant="t", user="u", dedupe_key="sum:t:u")
        await asyncio.wait_for(started.wait(), 10)
        again = await queue.enqueue("sum", {}, tenant="t", user="u", dedupe_key="sum:t:u")
        assert again == first
        release.set()
        done = await queue.wait(first, within=10)
        assert done is not None and done.status == "succeeded"
        assert runs == [1, 2]
        assert (await queue.list())[1] == 1
    finally:
        await queue.close()


async def test_pending_and_running_jobs_survive_restart(storage: Backend) -> None:
    first = JobQueue(storage.open())
    pending = await first.enqueue("work", {"n": 1}, tenant="t", user="u")
    crashed = await first.enqueue("work", {"n": 2}, tenant="t", user="u")
    await first.close()
    # Simulate a crash mid-run: the row is left `running` under a lease that has since expired.
    db = storage.open()
    with db.write() as conn:
        conn.execute(
            sa.update(jobs).where(jobs.c.id == crashed).values(
                status="running", owner="dead-replica", lease_token="gone", lease_expires_at=1.0, attempts=1
            )
        )

    second = JobQueue(storage.open())
    done: list[int] = []

    async def handler(job: Job, progress: Progress) -> None:
        done.append(job.payload["n"])

    second.register("work", handler)
    await second.start()
    try:
        for job_id in (pending, crashed):
            job = await second.wait(job_id, within=10)
            assert job is not None and job.status == "succeeded"
        assert sorted(done) == [1, 2]
        taken = await second.get(crashed)
        assert taken is not None and taken.attempts == 2
    finally:
        await second.close()


@pytest.mark.parametrize("exclusive", [True, False])
async def test_a_job_orphaned_under_a_live_lease(storage: Backend, exclusive: bool) -> None:
    """Exclusive (the embedded store, one process): a job `running` at start is an orphan and resumes at once.
    Shared: it may be another replica's, so it is left alone until its lease expires."""
    first = JobQueue(storage.open())
    orphan = await first.enqueue("work", {}, tenant="t", user="u")
    await first.close()
    db = storage.open()
    with db.write() as conn:
        conn.execute(
            sa.update(jobs).where(jobs.c.id == orphan).values(
                status="running", owner="before-the-crash", lease_token="old", lease_expires_at=4e9, attempts=1
            )
        )
    second = JobQueue(storage.open(), exclusive=exclusive, poll_interval_s=0.02)
    ran: list[str] = []

    async def handler(job: Job, progress: Progress) -> None:
        ran.append(job.id)

    second.register("work", handler)
    marker = await second.enqueue("work", {}, tenant="t", user="u")
    await second.start()
    try:
        assert (await second.wait(marker, within=10)) is not None
        if exclusive:
            done = await second.wait(orphan, within=10)
            assert done is not None and done.status == "succeeded" and ran == [orphan, marker]
        else:
            left = await second.get(orphan)
            assert left is not None and left.status == "running" and left.owner == "before-the-crash"
            assert ran == [marker]
    finally:
        await second.close()


async def test_forget_user_deletes_jobs_cancels_running_and_calls_hooks(storage: Backend) -> None:
    queue = JobQueue(storage.open())
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(job: Job, progress: Progress) -> None:
        started.set()
        await release.wait()
        await progress(0.9, "about to write")
        finished.append(job.id)

    forgotten: list[tuple[str, str]] = []

    async def hook(tenant: str, user: str) -> int:
        forgotten.append((tenant, user))
        return 7

    queue.register("slow", slow)
    queue.on_forget("rpm", hook)
    await queue.start()
    try:
        running = await queue.enqueue("slow", {}, tenant="t", user="alice")
        other = await queue.enqueue("other-kind", {}, tenant="t", user="bob")
        await asyncio.wait_for(started.wait(), 10)
        report = await queue.forget_user("t", "alice")
        release.set()
        assert report == {"jobs": 1, "rpm": 7}
        assert forgotten == [("t", "alice")]
        assert await queue.wait(running, within=10) is None
        assert finished == []
        jobs_, _ = await queue.list(user="alice")
        assert jobs_ == []
        assert (await queue.get(other)) is not None
    finally:
        await queue.close()


@pytest.mark.parametrize("bad_kind", ["nobody-handles-this"])
async def test_unhandled_kind_stays_pending(storage: Backend, bad_kind: str) -> None:
    queue = JobQueue(storage.open(), poll_interval_s=0.01)
    queue.register("known", lambda job, progress: asyncio.sleep(0))
    await queue.start()
    try:
        job_id = await queue.enqueue(bad_kind, {}, tenant="t", user="u")
        known = await queue.enqueue("known", {}, tenant="t", user="u")
        assert (await queue.wait(known, within=10)) is not None
        job = await queue.get(job_id)
        assert job is not None and job.status == "pending"
    finally:
        await queue.close()
