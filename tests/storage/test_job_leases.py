"""Jobs with leases across replicas: two queues on one database (and a real replica process) on both backends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from memory.jobs import Job, JobQueue, Progress
from tests.storage.results import create_results, record_result, written
from tests.support.postgres import Backend

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 0.6


async def until(check: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    """Await `check()` until it answers something truthy, or fail at the deadline (never a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


def replica(storage: Backend, name: str, **options: Any) -> JobQueue:
    options.setdefault("poll_interval_s", 0.02)
    options.setdefault("lease_s", LEASE_S)
    return JobQueue(storage.open(), replica_id=name, **options)


class Worker:
    """A replica in its own process (tests/storage/job_worker.py), its stdout collected line by line."""

    def __init__(self, url: str, lease_s: float) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.storage.job_worker", url, str(lease_s)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    async def said(self, text: str) -> bool:
        if self.process.poll() is not None and text not in self.lines:
            raise AssertionError(f"worker exited ({self.process.returncode}): {self.lines[-20:]}")
        return text in self.lines

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def signal(self, sig: int) -> None:
        os.kill(self.process.pid, sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=20)


@pytest.fixture()
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for worker in made:
        worker.stop()


async def test_two_replicas_run_each_job_exactly_once(storage: Backend) -> None:
    # A lease far longer than any run here: this test is about claiming, not about leases expiring.
    a, b = replica(storage, "a", workers=2, lease_s=30.0), replica(storage, "b", workers=2, lease_s=30.0)
    active: set[str] = set()
    runs: list[tuple[str, str]] = []
    overlaps: list[str] = []

    def handler_for(name: str) -> Callable[[Job, Progress], Awaitable[None]]:
        async def handler(job: Job, progress: Progress) -> None:
            if job.id in active:
                overlaps.append(job.id)
            active.add(job.id)
            await progress(0.5)
            active.discard(job.id)
            runs.append((job.id, name))

        return handler

    a.register("work", handler_for("a"))
    b.register("work", handler_for("b"))
    ids = [await a.enqueue("work", {"n": n}, tenant="t", user=f"u{n}") for n in range(30)]
    await a.start()
    await b.start()
    try:
        for job_id in ids:
            done = await a.wait(job_id, within=30)
            assert done is not None and done.status == "succeeded" and done.attempts == 1
        assert sorted(job_id for job_id, _ in runs) == sorted(ids)
        assert overlaps == []
    finally:
        await a.close()
        await b.close()


async def test_killed_replica_job_is_finished_by_another_after_its_lease(
    storage: Backend, workers: list[Worker]
) -> None:
    db = storage.open()
    create_results(db)
    a = replica(storage, "replica-a")
    worker = Worker(storage.url, LEASE_S)
    workers.append(worker)
    await until(lambda: worker.said("ready"))
    job_id = await a.enqueue("work", {}, tenant="t", user="u")
    await until(lambda: worker.said(f"started {job_id}"))
    held = await a.get(job_id)
    assert held is not None and held.status == "running" and held.owner == "replica-b"
    worker.signal(signal.SIGKILL)
    worker.process.wait(timeout=20)

    async def finish(job: Job, progress: Progress) -> None:
        await progress.complete(lambda conn: record_result(conn, job.id, "replica-a"))

    a.register("work", finish)
    await a.start()
    try:
        done = await a.wait(job_id, within=30)
        assert done is not None and done.status == "succeeded"
        assert done.attempts == 2 and done.owner is None
        assert written(db, job_id) == ["replica-a"]
    finally:
        await a.close()


async def test_stalled_replica_past_its_lease_writes_nothing(storage: Backend, workers: list[Worker]) -> None:
    db = storage.open()
    create_results(db)
    worker = Worker(storage.url, LEASE_S)
    workers.append(worker)
    await until(lambda: worker.said("ready"))
    a = replica(storage, "replica-a")
    job_id = await a.enqueue("work", {}, tenant="t", user="u")
    await until(lambda: worker.said(f"started {job_id}"))
    worker.signal(signal.SIGSTOP)  # a real stall: the process, its lease renewals included, stops

    async def finish(job: Job, progress: Progress) -> None:
        await progress.complete(lambda conn: record_result(conn, job.id, "replica-a"))

    a.register("work", finish)
    await a.start()
    try:
        done = await a.wait(job_id, within=30)
        assert done is not None and done.status == "succeeded" and done.attempts == 2
        # The stalled replica wakes up, is told to go on, and finds its lease gone.
        worker.go()
        worker.signal(signal.SIGCONT)
        await until(lambda: worker.said(f"lost {job_id}"))
        assert f"wrote {job_id}" not in worker.lines
        assert written(db, job_id) == ["replica-a"]
        after = await a.get(job_id)
        assert after is not None and after.status == "succeeded" and after.attempts == 2
    finally:
        await a.close()


async def test_close_releases_only_its_own_leases(storage: Backend) -> None:
    a, b = replica(storage, "a"), replica(storage, "b")
    started: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    release_b = asyncio.Event()

    async def on_a(job: Job, progress: Progress) -> None:
        started["a"].set()
        await asyncio.Event().wait()  # runs until its queue closes

    async def on_b(job: Job, progress: Progress) -> None:
        started["b"].set()
        await release_b.wait()

    a.register("a-work", on_a)
    b.register("b-work", on_b)
    job_a = await a.enqueue("a-work", {}, tenant="t", user="u")
    job_b = await a.enqueue("b-work", {}, tenant="t", user="u")
    await a.start()
    await b.start()
    try:
        await asyncio.wait_for(started["a"].wait(), 10)
        await asyncio.wait_for(started["b"].wait(), 10)
        await a.close()
        released = await b.get(job_a)
        assert released is not None and released.status == "pending" and released.owner is None
        assert released.attempts == 0  # an interrupted attempt is not a failed one
        kept = await b.get(job_b)
        assert kept is not None and kept.status == "running" and kept.owner == "b"
        release_b.set()
        done = await b.wait(job_b, within=10)
        assert done is not None and done.status == "succeeded"
    finally:
        await a.close()
        await b.close()


async def test_concurrent_enqueue_of_one_dedupe_key_from_two_replicas_gives_one_job(storage: Backend) -> None:
    a, b = replica(storage, "a"), replica(storage, "b")
    try:
        ids = await asyncio.gather(
            *(
                queue.enqueue("summary", {}, tenant="t", user="u", dedupe_key="summary:t:u")
                for _ in range(10)
                for queue in (a, b)
            )
        )
        assert len(set(ids)) == 1
        assert (await a.list())[1] == 1
    finally:
        await a.close()
        await b.close()


async def test_forget_on_one_replica_cancels_the_job_running_on_another(storage: Backend) -> None:
    a, b = replica(storage, "a"), replica(storage, "b")
    db = storage.open()
    create_results(db)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def on_b(job: Job, progress: Progress) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    b.register("work", on_b)
    job_id = await a.enqueue("work", {}, tenant="t", user="alice")
    await b.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        report = await a.forget_user("t", "alice")
        assert report["jobs"] == 1
        # B learns at its next lease renewal (a third of the lease), not at the lease's end.
        await asyncio.wait_for(cancelled.wait(), LEASE_S * 3)
        assert await a.get(job_id) is None
        assert written(db, job_id) == []
    finally:
        await a.close()
        await b.close()


async def test_progress_on_a_forgotten_job_raises_and_writes_nothing(storage: Backend) -> None:
    a, b = replica(storage, "a", lease_s=30.0), replica(storage, "b", lease_s=30.0)
    db = storage.open()
    create_results(db)
    started = asyncio.Event()
    go = asyncio.Event()
    outcome: list[str] = []

    async def on_b(job: Job, progress: Progress) -> None:
        started.set()
        await go.wait()
        try:
            await progress.complete(lambda conn: record_result(conn, job.id, "b"))
            outcome.append("wrote")
        except Exception as exc:
            outcome.append(type(exc).__name__)
            raise

    b.register("work", on_b)
    job_id = await a.enqueue("work", {}, tenant="t", user="alice")
    await b.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        await a.forget_user("t", "alice")
        go.set()  # long before B's next renewal: its own write is what finds the job gone
        await until(lambda: asyncio.sleep(0, result=bool(outcome)))
        assert outcome == ["JobCancelled"]
        assert written(db, job_id) == []
        assert await a.get(job_id) is None
    finally:
        await a.close()
        await b.close()
