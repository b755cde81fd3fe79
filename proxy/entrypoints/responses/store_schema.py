"""The stored-responses table and its migrations (see rapport/core/migrations.py for the scheme).

Version 1 is the table and index the embedded response store always created (`CREATE TABLE IF NOT EXISTS`,
the same columns and key), so an existing `responses.sqlite3` is adopted as version 1 with its rows intact.
On PostgreSQL `user` is quoted (reserved there), the JSON documents are BYTEA (SQLite's BLOB: orjson's
bytes, unchanged) and times are DOUBLE PRECISION (PostgreSQL's REAL cannot hold an epoch to the second).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database
from rapport.core.migrations import Migration, Schema, register

STORE = "responses"

metadata = sa.MetaData()
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("user", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("response", sa.LargeBinary, nullable=False),
    sa.Column("history", sa.LargeBinary, nullable=False),
)

# The embedded store's DDL as it always was (proxy/entrypoints/responses/store.py before the move).
_SQLITE_V1 = (
    "CREATE TABLE IF NOT EXISTS responses (id TEXT NOT NULL, tenant TEXT NOT NULL, user TEXT NOT NULL,"
    " created_at REAL NOT NULL, response BLOB NOT NULL, history BLOB NOT NULL,"
    " PRIMARY KEY (tenant, user, id))",
    "CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at)",
)

_POSTGRES_V1 = (
    'CREATE TABLE IF NOT EXISTS responses (id TEXT NOT NULL, tenant TEXT NOT NULL, "user" TEXT NOT NULL,'
    " created_at DOUBLE PRECISION NOT NULL, response BYTEA NOT NULL, history BYTEA NOT NULL,"
    ' PRIMARY KEY (tenant, "user", id))',
    "CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at)",
)


def _v1_table(conn: Connection, db: Database) -> None:
    for statement in _POSTGRES_V1 if db.is_postgres else _SQLITE_V1:
        conn.exec_driver_sql(statement)


SCHEMA = register(
    Schema(
        component="responses",
        store=STORE,
        migrations=(Migration(1, "responses table (the embedded store's original shape)", _v1_table),),
    )
)
