"""The job queue's table and its migrations (see rapport/core/migrations.py for the scheme).

Version 1 is the table the SQLite queue always had (so an existing `jobs.sqlite3` is adopted as version 1
without a change); version 2 adds leases: an owner (replica id), a lease token and its expiry, the `rerun`
flag, and makes dedupe a unique constraint over the active (pending or running) jobs of a key.
Columns are quoted where PostgreSQL reserves the name (`user`); times are epoch seconds in DOUBLE PRECISION
(PostgreSQL's REAL is 4 bytes, which cannot hold an epoch to the second).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database
from rapport.core.migrations import Migration, Schema, register

ACTIVE = ("pending", "running")

metadata = sa.MetaData()
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("user", sa.Text, nullable=False),
    sa.Column("dedupe_key", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("run_after", sa.Float, nullable=False),
    sa.Column("owner", sa.Text),
    sa.Column("lease_token", sa.Text),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("rerun", sa.Boolean, nullable=False),
)
# The partial unique index's predicate, also given as the ON CONFLICT target's (they must match).
ACTIVE_DEDUPE = sa.and_(jobs.c.dedupe_key.is_not(None), jobs.c.status.in_(ACTIVE))


def _sql(conn: Connection, *statements: str) -> None:
    for statement in statements:
        conn.exec_driver_sql(statement)


def _v1_table(conn: Connection, db: Database) -> None:
    _sql(
        conn,
        """CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            tenant TEXT NOT NULL,
            "user" TEXT NOT NULL,
            dedupe_key TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            progress DOUBLE PRECISION NOT NULL DEFAULT 0,
            message TEXT,
            error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            run_after DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_claim ON jobs (status, run_after, created_at)",
        'CREATE INDEX IF NOT EXISTS jobs_user ON jobs (tenant, "user")',
        "CREATE INDEX IF NOT EXISTS jobs_dedupe ON jobs (dedupe_key, status)",
    )


def _v2_leases(conn: Connection, db: Database) -> None:
    _sql(
        conn,
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_token TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION",
        "ALTER TABLE jobs ADD COLUMN rerun BOOLEAN NOT NULL DEFAULT FALSE",
        # Rows left `running` by the lease-less queue belong to no live worker: their attempt did not finish.
        "UPDATE jobs SET status = 'pending' WHERE status = 'running'",
        # The old read-then-insert dedupe could leave two pending jobs of one key; keep the oldest.
        """DELETE FROM jobs WHERE dedupe_key IS NOT NULL AND status = 'pending' AND EXISTS (
            SELECT 1 FROM jobs older WHERE older.dedupe_key = jobs.dedupe_key AND older.status = 'pending'
            AND (older.created_at < jobs.created_at OR (older.created_at = jobs.created_at AND older.id < jobs.id)))""",
        "DROP INDEX IF EXISTS jobs_dedupe",
        "CREATE UNIQUE INDEX jobs_dedupe_active ON jobs (dedupe_key)"
        " WHERE dedupe_key IS NOT NULL AND status IN ('pending', 'running')",
        "CREATE INDEX jobs_lease ON jobs (status, lease_expires_at)",
    )


SCHEMA = register(
    Schema(
        component="jobs",
        store="jobs",
        migrations=(
            Migration(1, "jobs table (the embedded queue's original shape)", _v1_table),
            Migration(2, "leases (owner, token, expiry), rerun flag, unique dedupe of active jobs", _v2_leases),
        ),
    )
)
