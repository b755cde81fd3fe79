"""The API key table and its migrations (see rapport/core/migrations.py for the scheme).

Version 1 is the table the SQLite key store always created (`CREATE TABLE IF NOT EXISTS`, the same columns), so
an existing `keys.sqlite3` is adopted as version 1 with its keys intact. Times are DOUBLE PRECISION: on SQLite
that is the same REAL affinity the old DDL declared; on PostgreSQL REAL would be 4 bytes, too small to hold an
epoch to the second. `user` is quoted because PostgreSQL reserves it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database
from rapport.core.migrations import Migration, Schema, register

metadata = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("user", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    # 0 or 1, as the SQLite store always wrote it (kept an integer so old rows need no conversion).
    sa.Column("revoked", sa.Integer, nullable=False),
    sa.Column("rate_limit_rps", sa.Float),
)


def _v1_table(conn: Connection, db: Database) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE IF NOT EXISTS api_keys (
            key_id TEXT PRIMARY KEY,
            key_hash TEXT UNIQUE NOT NULL,
            name TEXT NOT NULL,
            tenant TEXT NOT NULL,
            "user" TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0,
            rate_limit_rps DOUBLE PRECISION
        )"""
    )


SCHEMA = register(
    Schema(
        component="keys",
        store="keys",
        migrations=(Migration(1, "api_keys table (the embedded key store's original shape)", _v1_table),),
    )
)
