"""A durable background job queue in SQLite: the request path enqueues, workers do the slow work.

Every state change is committed (WAL, synchronous=FULL) before it is acknowledged, so pending work survives
a crash; jobs that were `running` when the process died are put back to `pending` at the next start.
SQLite calls run in one worker thread behind a lock, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

log = logging.getLogger("rapport.jobs")

JobStatus = Literal["pending", "running", "succeeded", "failed"]
Progress = Callable[[float, str | None], Awaitable[None]]
Handler = Callable[["Job", Progress], Awaitable[None]]
ForgetHook = Callable[[str, str], Awaitable[Any]]
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    dedupe_key TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    run_after REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, run_after, created_at);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (tenant, user);
CREATE INDEX IF NOT EXISTS jobs_dedupe ON jobs (dedupe_key, status);
"""


class JobCancelled(Exception):
    """Raised from `progress` when the job was deleted (its user forgotten) while it ran."""


@dataclass(slots=True)
class Job:
    id: str
    kind: str
    payload: dict[str, Any]
    tenant: str
    user: str
    status: JobStatus
    attempts: int
    max_attempts: int
    progress: float
    message: str | None
    error: str | None
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    dedupe_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra", None)
        return out


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        payload=json.loads(row["payload"]),
        tenant=row["tenant"],
        user=row["user"],
        status=row["status"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        progress=row["progress"],
        message=row["message"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        dedupe_key=row["dedupe_key"],
    )


class JobQueue:
    def __init__(
        self,
        path: Path | str,
        *,
        workers: int = 1,
        max_attempts: int = 3,
        retry_backoff_s: float = 1.0,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._workers = workers
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_s
        self._poll = poll_interval_s
        self._handlers: dict[str, Handler] = {}
        self._forget_hooks: dict[str, ForgetHook] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapport-jobs")
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._cancelled: set[str] = set()
        self._closed = False
        self._shut = False

    # -- registration -------------------------------------------------------------------------------

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def on_forget(self, name: str, hook: ForgetHook) -> None:
        """Register `async hook(tenant, user)`, called by `forget_user` (each store removes its own data)."""
        self._forget_hooks[name] = hook

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    # -- sqlite in the worker thread ----------------------------------------------------------------

    def _sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sync, fn)

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
        """Queue a job (committed before returning); a pending job with the same dedupe_key is reused."""
        job_id = uuid.uuid4().hex
        body = json.dumps(payload)
        attempts = max_attempts or self._max_attempts

        def insert(conn: sqlite3.Connection) -> str:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if dedupe_key is not None:
                    row = conn.execute(
                        "SELECT id FROM jobs WHERE dedupe_key=? AND status='pending' LIMIT 1", (dedupe_key,)
                    ).fetchone()
                    if row is not None:
                        conn.execute("COMMIT")
                        return str(row["id"])
                now = time.time()
                conn.execute(
                    "INSERT INTO jobs (id, kind, payload, tenant, user, dedupe_key, status, max_attempts,"
                    " created_at, updated_at) VALUES (?,?,?,?,?,?, 'pending', ?, ?, ?)",
                    (job_id, kind, body, tenant, user, dedupe_key, attempts, now, now),
                )
                conn.execute("COMMIT")
                return job_id
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        result = await self._run(insert)
        if self._wake is not None:
            self._wake.set()
        return result

    async def get(self, job_id: str) -> Job | None:
        row = await self._run(lambda c: c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        return _row_to_job(row) if row is not None else None

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
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("status", status), ("kind", kind), ("tenant", tenant), ("user", user)):
            if value is not None:
                clauses.append(f"{column}=?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def query(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            rows = conn.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            total = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            return rows, int(total)

        rows, total = await self._run(query)
        return [_row_to_job(r) for r in rows], total

    async def counts(self) -> dict[str, int]:
        rows = await self._run(
            lambda c: c.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        )
        return {str(r[0]): int(r[1]) for r in rows}

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
        """Remove every job of the user (payloads may hold their text); running ones are cancelled."""

        def delete(conn: sqlite3.Connection) -> tuple[list[str], int]:
            running = [
                str(r[0])
                for r in conn.execute(
                    "SELECT id FROM jobs WHERE tenant=? AND user=? AND status='running'", (tenant, user)
                ).fetchall()
            ]
            cur = conn.execute("DELETE FROM jobs WHERE tenant=? AND user=?", (tenant, user))
            return running, cur.rowcount

        running, count = await self._run(delete)
        self._cancelled.update(running)
        return count

    async def forget_user(self, tenant: str, user: str) -> dict[str, Any]:
        """Delete the user's jobs and run every registered forget hook; returns what each removed."""
        report: dict[str, Any] = {"jobs": await self.delete_for_user(tenant, user)}
        for name, hook in list(self._forget_hooks.items()):
            report[name] = await hook(tenant, user)
        return report

    # -- consumer side ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        # Jobs left running by a crash are resumed: their attempt did not finish.
        await self._run(
            lambda c: c.execute(
                "UPDATE jobs SET status='pending', updated_at=? WHERE status='running'", (time.time(),)
            )
        )
        self._wake = asyncio.Event()
        self._closed = False
        for i in range(self._workers):
            self._tasks.append(
                asyncio.get_running_loop().create_task(self._worker(), name=f"rapport-job-{i}")
            )

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

        def shutdown(conn: sqlite3.Connection) -> None:
            # Put interrupted work back now rather than waiting for the next start.
            conn.execute("UPDATE jobs SET status='pending' WHERE status='running'")

        try:
            await self._run(shutdown)
        finally:
            with self._lock:
                self._conn.close()
            self._executor.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._closed

    async def _claim(self) -> Job | None:
        kinds = list(self._handlers)
        if not kinds:
            return None
        marks = ",".join("?" for _ in kinds)

        def claim(conn: sqlite3.Connection) -> sqlite3.Row | None:
            now = time.time()
            row: sqlite3.Row | None = conn.execute(
                "UPDATE jobs SET status='running', attempts=attempts+1, started_at=?, updated_at=?"
                " WHERE id = (SELECT id FROM jobs WHERE status='pending' AND run_after<=?"
                f" AND kind IN ({marks}) ORDER BY created_at LIMIT 1) RETURNING *",
                (now, now, now, *kinds),
            ).fetchone()
            return row

        row = await self._run(claim)
        return _row_to_job(row) if row is not None else None

    async def _worker(self) -> None:
        assert self._wake is not None
        while not self._closed:
            try:
                job = await self._claim()
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll)
                except TimeoutError:
                    pass
                continue
            await self._execute(job)

    async def _execute(self, job: Job) -> None:
        handler = self._handlers[job.kind]

        async def progress(fraction: float, message: str | None = None) -> None:
            if job.id in self._cancelled:
                raise JobCancelled(job.id)
            value = min(max(float(fraction), 0.0), 1.0)
            await self._run(
                lambda c: c.execute(
                    "UPDATE jobs SET progress=?, message=?, updated_at=? WHERE id=?",
                    (value, message, time.time(), job.id),
                )
            )

        try:
            await handler(job, progress)
        except asyncio.CancelledError:
            raise
        except JobCancelled:
            self._cancelled.discard(job.id)
            return
        except Exception as exc:
            log.warning("job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts, exc)
            error = f"{exc.__class__.__name__}: {exc}"[:2000]
            final = job.attempts >= job.max_attempts
            delay = self._backoff * (2 ** (job.attempts - 1))
            await self._run(
                lambda c: c.execute(
                    "UPDATE jobs SET status=?, error=?, updated_at=?, run_after=?, finished_at=? WHERE id=?",
                    (
                        "failed" if final else "pending",
                        error,
                        time.time(),
                        time.time() + (0 if final else delay),
                        time.time() if final else None,
                        job.id,
                    ),
                )
            )
            return
        self._cancelled.discard(job.id)
        await self._run(
            lambda c: c.execute(
                "UPDATE jobs SET status='succeeded', progress=1.0, error=NULL, updated_at=?, finished_at=?"
                " WHERE id=?",
                (time.time(), time.time(), job.id),
            )
        )
