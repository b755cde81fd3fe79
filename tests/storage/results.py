"""A table where the lease tests' handlers write their results (in the jobs' own database)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database

results = sa.Table(
    "test_results", sa.MetaData(), sa.Column("job_id", sa.Text, nullable=False), sa.Column("writer", sa.Text, nullable=False)
)


def create_results(db: Database) -> None:
    with db.write() as conn:
        results.create(conn, checkfirst=True)


def record_result(conn: Connection, job_id: str, writer: str) -> None:
    conn.execute(sa.insert(results).values(job_id=job_id, writer=writer))


def written(db: Database, job_id: str) -> list[str]:
    with db.read() as conn:
        return [str(r) for r in conn.execute(sa.select(results.c.writer).where(results.c.job_id == job_id)).scalars()]
