"""The durable job queue: runs, retries, dedupes, survives a restart, forgets a user."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from memory.jobs import Job, JobQueue, Progress


async def test_job_runs_and_reports_progress(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3")
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
        assert seen == [{"x": 1}]
        jobs, total = await queue.list(status="succeeded")
        assert total == 1 and jobs[0].id == job_id
    finally:
        await queue.close()


async def test_retries_then_fails(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3", max_attempts=3, retry_backoff_s=0.0, poll_interval_s=0.02)
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


async def test_dedupe_key_pending_only(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    a = await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key="summary:t:u")
    b = await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key="summary:t:u")
    c = await queue.enqueue("k", {}, tenant="t", user="u", dedupe_key="other")
    assert a == b and a != c
    _, total = await queue.list()
    assert total == 2
    await queue.close()


async def test_pending_and_running_jobs_survive_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = JobQueue(path)
    pending = await first.enqueue("work", {"n": 1}, tenant="t", user="u")
    crashed = await first.enqueue("work", {"n": 2}, tenant="t", user="u")
    await first.close()
    # Simulate a crash mid-run: the row is left `running` on disk.
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE jobs SET status='running' WHERE id=?", (crashed,))

    second = JobQueue(path)
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
    finally:
        await second.close()


async def test_forget_user_deletes_jobs_cancels_running_and_calls_hooks(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3")
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
        jobs, _ = await queue.list(user="alice")
        assert jobs == []
        assert (await queue.get(other)) is not None
    finally:
        await queue.close()


@pytest.mark.parametrize("bad_kind", ["nobody-handles-this"])
async def test_unhandled_kind_stays_pending(tmp_path: Path, bad_kind: str) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3", poll_interval_s=0.01)
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
