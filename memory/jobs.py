"""A durable background job queue with leases: the request path enqueues, workers on any replica do the slow work.

One table (memory/job_schema.py) in the queue's `Database`: the embedded SQLite file, or the PostgreSQL
database that every replica shares. How a job moves:

- `enqueue` commits before it returns. A dedupe key is a unique constraint over the key's active (pending or
  running) jobs, so concurrent enqueues on any replicas give one job: a second enqueue while the job is pending
  reuses it; while it runs, it marks the job to run once more when it finishes (the running attempt may have
  read its inputs before the new data came), and the caller still gets that job's id.
- A worker claims the oldest runnable job (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer,
  and the claim is one write transaction): runnable is pending, or running under a lease that expired because
  its replica died or stalled. The claim sets the owner (this replica's id), a fresh lease token and the
  lease's expiry on the database's clock.
- While the handler runs, the worker renews the lease every third of its length; each progress report renews
  it too. Every write of a running job names its token, so a worker whose lease was taken over (or whose job
  was deleted by a forget on any replica) writes nothing: it learns so at its next renewal or progress
  report, and its handler is cancelled.
- The outcome (and, with `progress.complete(write)`, the handler's own result) is written in one transaction
  that first checks the token.
- `close()` puts back only the jobs this queue holds; a crashed replica's jobs are taken over when their lease
  expires. Database calls run in the database's threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from memory.job_schema import ACTIVE_DEDUPE, SCHEMA, jobs
from memory.job_table import NOW, Job, JobStatus, JobTable, store_text, to_job
from rapport.core.database import Database
from rapport.core.forget_log import SCHEMA as FORGET_LOG_SCHEMA
from rapport.core.forget_log import ForgetLog, LoggedForget
from rapport.core.migrations import open_store
from rapport.core.userdata import Counts, UserDataRegistry, user_digest

__all__ = ["ForgetHook", "Handler", "Job", "JobCancelled", "JobQueue", "JobStatus", "Progress"]

log = logging.getLogger("rapport.jobs")

ForgetHook = Callable[[str, str], Awaitable[Any]]
# (tenant, user) pairs; an alias because `JobQueue.list` hides the builtin inside the class.
UserKeys = list[tuple[str, str]]
T = TypeVar("T")


class JobCancelled(Exception):
    """Raised from `progress` when the job is no longer this worker's: deleted (its user forgotten, on any
    replica) or taken over by another replica after this one's lease expired."""


class Progress(Protocol):
    """What a handler gets besides its job: report progress, and optionally write its result atomically."""

    async def __call__(self, fraction: float, message: str | None = None) -> None: ...

    async def complete(self, write: Callable[[Connection], T]) -> T:
        """Run `write(conn)` on the queue's database and mark the job succeeded, in one transaction that
        first checks this worker still holds the job's lease; raises JobCancelled (writing nothing) if not."""
        ...


Handler = Callable[["Job", Progress], Awaitable[None]]



class _ForgetOnly:
    """A store registered through `on_forget`: forgotten with the rest, nothing to export or import."""

    def __init__(self, name: str, hook: ForgetHook) -> None:
        self.name = name
        self._hook = hook

    async def forget(self, tenant: str, user: str) -> Counts:
        result: Counts = await self._hook(tenant, user)
        return result

    async def export(self, tenant: str, user: str) -> Any:
        return None

    async def import_(self, tenant: str, user: str, data: Any) -> Counts:
        return {}

    async def owners(self, tenant: str) -> set[str]:
        return set()


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class _Running:
    """One job this queue is executing: its lease token and the task running its handler."""

    job: Job
    token: str
    task: asyncio.Task[None] | None = None
    lost: bool = False  # the lease is gone (taken over, or the job deleted): write nothing
    completed: bool = False  # the handler wrote its outcome through progress.complete


class JobQueue:
    def __init__(
        self,
        database: Database | Path | str,
        *,
        workers: int = 1,
        max_attempts: int = 3,
        retry_backoff_s: float = 1.0,
        poll_interval_s: float = 1.0,
        lease_s: float = 30.0,
        replica_id: str | None = None,
        migrate: bool = True,
        exclusive: bool | None = None,
    ) -> None:
        # A path is the embedded convenience for tools and benches: the queue then owns that SQLite file.
        self.db, self._owns_db = open_store(database, SCHEMA, migrate=migrate)
        # Exclusive: no other process uses this database (the embedded store, held under the data dir's lock),
        # so a job `running` at start is an orphan of a crash and resumes at once instead of after its lease.
        self._exclusive = self._owns_db if exclusive is None else exclusive
        self.replica_id = replica_id or default_replica_id()
        self._workers = workers
        self._max_attempts = max_attempts
        self._poll = poll_interval_s
        self.lease_s = lease_s
        self._table = JobTable(self.db, replica_id=self.replica_id, lease_s=lease_s, retry_backoff_s=retry_backoff_s)
        self._handlers: dict[str, Handler] = {}
        # Every store holding per-user data registers its forget, export and import here
        # (rapport/core/userdata.py); a forget logs itself first, in the queue's database (forget_log.py).
        self.userdata = UserDataRegistry()
        try:
            open_store(self.db, FORGET_LOG_SCHEMA, migrate=migrate)
        except BaseException:
            if self._owns_db:
                self.db.close()
            raise
        self.forget_log = ForgetLog(self.db)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._running: dict[str, _Running] = {}
        self._closed = False
        self._shut = False

    # -- registration -------------------------------------------------------------------------------

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def on_forget(self, name: str, hook: ForgetHook) -> None:
        """Register a forget without export or import. Prefer `userdata.register(part)`: a store registered
        only here is left out of the export, and the registry's isolation test reports it."""
        self.userdata.register(_ForgetOnly(name, hook))

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    # -- producer side ------------------------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        tenant: str,
        user: str,
        dedupe_key: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        """Queue a job (committed before returning); an active job with the same dedupe_key is reused."""
        body = json.dumps(payload)
        attempts = max_attempts or self._max_attempts

        def insert() -> str:
            with self.db.write() as conn:
                now = self._table.now(conn)
                row = {
                    "id": uuid.uuid4().hex, "kind": kind, "payload": body, "tenant": tenant, "user": user,
                    "dedupe_key": store_text(dedupe_key) if dedupe_key is not None else None, "status": "pending", "attempts": 0, "max_attempts": attempts,
                    "progress": 0.0, "created_at": now, "updated_at": now, "run_after": 0.0, "rerun": False,
                }
                stmt = self.db.insert(jobs).values(**row)
                if dedupe_key is not None:
                    # The existing active job wins; if it is already running, it runs once more afterwards.
                    stmt = stmt.on_conflict_do_update(
                        index_elements=[jobs.c.dedupe_key],
                        index_where=ACTIVE_DEDUPE,
                        set_={"rerun": sa.or_(jobs.c.rerun, jobs.c.status == "running"), "updated_at": now},
                    )
                return str(conn.execute(stmt.returning(jobs.c.id)).scalar_one())

        result = await self.db.run(insert)
        if self._wake is not None:
            self._wake.set()
        return result

    async def get(self, job_id: str) -> Job | None:
        def fetch() -> RowMapping | None:
            with self.db.read() as conn:
                return conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()

        row = await self.db.run(fetch)
        return to_job(row) if row is not None else None

    async def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Job], int]:
        """(page of jobs newest first, total matching)."""
        where = [
            column == value
            for column, value in ((jobs.c.status, status), (jobs.c.kind, kind), (jobs.c.tenant, tenant), (jobs.c.user, user))
            if value is not None
        ]

        def query() -> tuple[list[RowMapping], int]:
            with self.db.read() as conn:
                rows = conn.execute(
                    sa.select(jobs).where(*where).order_by(jobs.c.created_at.desc()).limit(limit).offset(offset)
                ).mappings().all()
                total = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(*where)).scalar_one()
                return list(rows), int(total)

        rows, total = await self.db.run(query)
        return [to_job(r) for r in rows], total

    async def counts(self) -> dict[str, int]:
        def query() -> dict[str, int]:
            with self.db.read() as conn:
                rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
                return {str(r[0]): int(r[1]) for r in rows}

        return await self.db.run(query)

    async def wait(self, job_id: str, within: float = 60.0, interval: float = 0.05) -> Job | None:
        """Poll until the job is finished (succeeded/failed) or gone; None when it was deleted."""
        deadline = time.monotonic() + within
        while True:
            job = await self.get(job_id)
            if job is None or job.status in ("succeeded", "failed"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {within}s")
            await asyncio.sleep(interval)

    async def delete_for_user(self, tenant: str, user: str) -> int:
        """Remove every job of the user (payloads may hold their text). A job running here is cancelled at
        once; one running on another replica is cancelled at that worker's next renewal or progress report."""

        def delete() -> int:
            with self.db.write() as conn:
                result = conn.execute(sa.delete(jobs).where(jobs.c.tenant == tenant, jobs.c.user == user))
                return int(result.rowcount)

        count = await self.db.run(delete)
        for running in list(self._running.values()):
            if running.job.tenant == tenant and running.job.user == user:
                self._lose(running, "its user was forgotten")
        return count

    async def forget_user(self, tenant: str, user: str, *, log: bool = True) -> dict[str, Any]:
        """Log the forget, delete the user's jobs and run every registered part's forget; what each removed.

        Logged first and committed: a forget that fails half-way is still in the log, and a replay finishes it."""
        if log:
            await self.db.run(self.forget_log.append, tenant, user)
        report: dict[str, Any] = {"jobs": await self.delete_for_user(tenant, user)}
        report.update(await self.userdata.forget(tenant, user))
        return report

    async def replay_forgets(self, entries: Sequence[LoggedForget]) -> UserKeys:
        """Forget again the users of logged forgets that the stores hold (after a restore from a backup older
        than them); the (tenant, user) pairs forgotten. Users are found by digest among each part's owners."""
        done: UserKeys = []
        wanted: dict[str, set[str]] = {}
        for entry in entries:
            wanted.setdefault(entry.tenant, set()).add(entry.user_digest)
        for tenant, digests in wanted.items():
            owners: set[str] = set()
            for part in self.userdata.parts():
                owners |= await part.owners(tenant)
            for user in sorted(owners):
                if user_digest(tenant, user) in digests:
                    await self.forget_user(tenant, user, log=False)
                    done.append((tenant, user))
        return done

    # -- consumer side ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        # Shared: nothing is reset; a job left running by a crash is taken over once its lease expires, and jobs
        # other replicas run are theirs.
        if self._exclusive:
            await self.db.run(self._table.release_all)
        self._wake = asyncio.Event()
        self._closed = False
        for i in range(self._workers):
            self._tasks.append(asyncio.get_running_loop().create_task(self._worker(), name=f"rapport-job-{i}"))

    async def close(self) -> None:
        if self._shut:
            return
        self._shut = True
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self._owns_db:
            self.db.close()

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._closed

    async def _claim(self) -> tuple[Job, str] | None:
        kinds = list(self._handlers)
        if not kinds:
            return None
        return await self.db.run(self._table.claim, kinds)

    async def _worker(self) -> None:
        assert self._wake is not None
        while not self._closed:
            try:
                claimed = await self._claim()
            except Exception:
                log.exception("claiming a job failed")
                claimed = None
            if claimed is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
                except TimeoutError:
                    pass
                continue
            try:
                await self._execute(*claimed)
            except Exception:
                # Most likely the database went away while the outcome was written: the job stays under this
                # worker's lease until it expires, then runs again. The worker itself goes on.
                log.exception("job %s: writing its outcome failed", claimed[0].id)

    # -- writes under the lease ---------------------------------------------------------------------

    def _lose(self, running: _Running, why: str) -> None:
        if running.lost:
            return
        running.lost = True
        log.info("job %s (%s) is no longer ours (%s): cancelling its handler", running.job.id, running.job.kind, why)
        if running.task is not None and not running.task.done():
            running.task.cancel()

    async def _keep_lease(self, running: _Running) -> None:
        """Renew the lease every third of its length; cancel the handler once it is lost."""
        interval = self.lease_s / 3
        renewed = time.monotonic()
        while not running.lost:
            await asyncio.sleep(interval)
            try:
                held = await self.db.run(self._table.renew, running.job.id, running.token, {})
            except Exception as exc:
                log.warning("renewing the lease of job %s failed: %s", running.job.id, exc)
                if time.monotonic() - renewed > self.lease_s:
                    self._lose(running, "its lease could not be renewed in time")
                continue
            if not held:
                self._lose(running, "deleted, or taken over after its lease expired")
            renewed = time.monotonic()

    async def _execute(self, job: Job, token: str) -> None:
        running = _Running(job, token)
        handler = self._handlers[job.kind]

        async def call() -> None:
            await handler(job, _JobProgress(self, running))

        running.task = asyncio.get_running_loop().create_task(call(), name=f"rapport-job-{job.kind}")
        self._running[job.id] = running
        keeper = asyncio.get_running_loop().create_task(self._keep_lease(running), name="rapport-job-lease")
        try:
            await asyncio.wait({running.task})
        except asyncio.CancelledError:
            # The queue is closing: stop the handler and give the job back (only if it is still ours).
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)
            if not running.lost and not running.completed:
                try:
                    await self.db.run(self._table.settle, running.job.id, running.token, "released")
                except Exception:
                    log.exception("releasing job %s failed; it is taken over when its lease expires", job.id)
            raise
        finally:
            keeper.cancel()
            self._running.pop(job.id, None)
        if running.lost or running.completed or running.task.cancelled():
            if running.lost:
                log.info("job %s (%s): lease lost, its outcome was not written", job.id, job.kind)
            return
        exc = running.task.exception()
        if isinstance(exc, JobCancelled):
            return
        if exc is None:
            ok, _ = await self.db.run(self._table.settle, running.job.id, running.token, "succeeded")
        else:
            log.warning("job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts, exc)
            error = store_text(f"{exc.__class__.__name__}: {exc}"[:2000])
            ok, _ = await self.db.run(self._table.settle, running.job.id, running.token, "failed", error)
        if not ok:
            log.info("job %s (%s): lease lost before its outcome was written; nothing written", job.id, job.kind)


class _JobProgress:
    """The `progress` a handler gets: every report renews the lease and checks the job is still ours."""

    def __init__(self, queue: JobQueue, running: _Running) -> None:
        self._queue = queue
        self._running = running

    async def __call__(self, fraction: float, message: str | None = None) -> None:
        if self._running.lost:
            raise JobCancelled(self._running.job.id)
        value = min(max(float(fraction), 0.0), 1.0)
        held = await self._queue.db.run(
            self._queue._table.renew, self._running.job.id, self._running.token,
            {"progress": value, "message": store_text(message) if message is not None else None, "updated_at": NOW},
        )
        if not held:
            self._running.lost = True
            raise JobCancelled(self._running.job.id)

    async def complete(self, write: Callable[[Connection], T]) -> T:
        if self._running.lost:
            raise JobCancelled(self._running.job.id)
        ok, result = await self._queue.db.run(
            self._queue._table.settle, self._running.job.id, self._running.token, "succeeded", None, write
        )
        if not ok:
            self._running.lost = True
            raise JobCancelled(self._running.job.id)
        self._running.completed = True
        return result  # type: ignore[no-any-return]
