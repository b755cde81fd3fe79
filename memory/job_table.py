"""The job queue's rows and every write that needs a lease: claim, renew, settle (blocking; run in the
database's threads by memory/jobs.py). Every write of a running job names its lease token, so a worker that
lost its lease (taken over after it expired, or its job deleted by a forget) changes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from memory.job_schema import jobs
from rapport.core.database import Database

JobStatus = Literal["pending", "running", "succeeded", "failed"]
Outcome = Literal["succeeded", "failed", "released"]
NOW = object()  # as a value in `renew`: the database's clock


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
    owner: str | None = None
    lease_expires_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra", None)
        return out


def store_text(text: str) -> str:
    """Text as the jobs table can hold it on both backends: PostgreSQL's text cannot contain NUL, which callers
    use as a separator in dedupe keys. Reversible (`read_text`), so distinct keys stay distinct."""
    return text.replace("\\", "\\\\").replace("\x00", "\\0")


def read_text(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append("\x00" if following == "0" else following)
        else:
            out.append(char)
    return "".join(out)


def to_job(row: RowMapping) -> Job:
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
        dedupe_key=read_text(row["dedupe_key"]) if row["dedupe_key"] is not None else None,
        owner=row["owner"],
        lease_expires_at=row["lease_expires_at"],
    )


class JobTable:
    """Lease-guarded writes of one replica (`replica_id`) on the jobs table of `db`."""

    def __init__(self, db: Database, *, replica_id: str, lease_s: float, retry_backoff_s: float) -> None:
        self.db = db
        self.replica_id = replica_id
        self.lease_s = lease_s
        self.backoff = retry_backoff_s

    def now(self, conn: Connection) -> float:
        return float(conn.execute(sa.select(self.db.now())).scalar_one())

    def claim(self, kinds: Sequence[str]) -> tuple[Job, str] | None:
        """Take the oldest runnable job of these kinds: pending and due, or running under an expired lease.
        Returns the job and this claim's lease token."""
        token = uuid.uuid4().hex
        with self.db.write() as conn:
            now = self.now(conn)
            expired = sa.and_(
                jobs.c.status == "running",
                sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < now),
            )
            runnable = sa.or_(sa.and_(jobs.c.status == "pending", jobs.c.run_after <= now), expired)
            for _ in range(16):
                row = conn.execute(
                    sa.select(jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.max_attempts)
                    .where(jobs.c.kind.in_(kinds), runnable)
                    .order_by(jobs.c.created_at)
                    .limit(1)
                    # PostgreSQL: replicas claiming at once each get a different row, none waits.
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                if row.status == "running" and row.attempts >= row.max_attempts:
                    # Its replica died on every attempt: a job that kills its worker must not loop forever.
                    conn.execute(
                        sa.update(jobs).where(jobs.c.id == row.id).values(
                            status="failed", finished_at=now, updated_at=now, owner=None, lease_token=None,
                            lease_expires_at=None,
                            error=f"lease expired on attempt {row.attempts} of {row.max_attempts}: the replica running it stopped",
                        )
                    )
                    continue
                claimed = conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == row.id)
                    .values(
                        status="running", attempts=jobs.c.attempts + 1, started_at=now, updated_at=now,
                        owner=self.replica_id, lease_token=token, lease_expires_at=now + self.lease_s,
                    )
                    .returning(*jobs.c)
                ).mappings().one()
                return to_job(claimed), token
        return None

    def release_all(self) -> int:
        """Put every running job back to pending: only for a database no other process uses."""
        with self.db.write() as conn:
            now = self.now(conn)
            result = conn.execute(
                sa.update(jobs).where(jobs.c.status == "running").values(
                    status="pending", owner=None, lease_token=None, lease_expires_at=None, updated_at=now
                )
            )
            return int(result.rowcount)

    def _mine(self, job_id: str, token: str) -> sa.ColumnElement[bool]:
        return sa.and_(jobs.c.id == job_id, jobs.c.lease_token == token, jobs.c.status == "running")

    def renew(self, job_id: str, token: str, values: dict[str, Any]) -> bool:
        """Extend the lease (and write `values`, NOW meaning the database's clock); False when it is gone."""
        with self.db.write() as conn:
            now = self.now(conn)
            result = conn.execute(
                sa.update(jobs)
                .where(self._mine(job_id, token))
                .values(lease_expires_at=now + self.lease_s, **{k: (now if v is NOW else v) for k, v in values.items()})
            )
            return bool(result.rowcount)

    def settle(
        self,
        job_id: str,
        token: str,
        outcome: Outcome,
        error: str | None = None,
        write: Callable[[Connection], Any] | None = None,
    ) -> tuple[bool, Any]:
        """Write the job's outcome, and `write(conn)` before it, in one transaction, if the lease is still
        held (its row locked first). Returns (written, what `write` returned)."""
        with self.db.write() as conn:
            held = conn.execute(
                sa.select(jobs.c.rerun, jobs.c.attempts, jobs.c.max_attempts)
                .where(self._mine(job_id, token))
                .with_for_update()
            ).mappings().first()
            if held is None:
                return False, None
            result = write(conn) if write is not None else None
            now = self.now(conn)
            base: dict[str, Any] = {"owner": None, "lease_token": None, "lease_expires_at": None, "updated_at": now}
            if outcome == "released":
                # Shutdown interrupted the attempt; it did not fail, so it does not count.
                values = {**base, "status": "pending", "attempts": max(held["attempts"] - 1, 0), "run_after": 0.0}
            elif held["rerun"]:
                # New input arrived while it ran: one more run, from a clean slate.
                values = {**base, "status": "pending", "attempts": 0, "rerun": False, "progress": 0.0,
                          "run_after": 0.0, "error": error}
            elif outcome == "succeeded":
                values = {**base, "status": "succeeded", "progress": 1.0, "error": None, "finished_at": now}
            else:
                final = held["attempts"] >= held["max_attempts"]
                delay = self.backoff * (2 ** (held["attempts"] - 1))
                values = {**base, "status": "failed" if final else "pending", "error": error,
                          "run_after": now + (0.0 if final else delay), "finished_at": now if final else None}
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
            return True, result
