"""The VAS profile table (per-user value-model weights) and its migrations.

Version 1 is the table the embedded profile store always created (`CREATE TABLE IF NOT EXISTS`, the same
columns and key), so an existing `vas/vas.sqlite3` is adopted as version 1 with its profiles intact. On
PostgreSQL `user` is quoted (reserved there) and times and beta are DOUBLE PRECISION (PostgreSQL's REAL is 4
bytes, too small for an epoch). Embedded, the file stays at `<data_dir>/vas/vas.sqlite3` (store `vas/vas`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database
from rapport.core.migrations import Migration, Schema, register

STORE = "vas/vas"

metadata = sa.MetaData()
vas_profiles = sa.Table(
    "vas_profiles",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("user", sa.Text, primary_key=True),
    sa.Column("weights", sa.Text, nullable=False),
    sa.Column("beta", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# The embedded store's DDL as it always was (reasoning/vas/store.py before the move), run verbatim on SQLite.
_SQLITE_V1 = """CREATE TABLE IF NOT EXISTS vas_profiles (
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    weights TEXT NOT NULL,
    beta REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, user)
)"""

_POSTGRES_V1 = """CREATE TABLE IF NOT EXISTS vas_profiles (
    tenant TEXT NOT NULL,
    "user" TEXT NOT NULL,
    weights TEXT NOT NULL,
    beta DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, "user")
)"""


def _v1_table(conn: Connection, db: Database) -> None:
    conn.exec_driver_sql(_POSTGRES_V1 if db.is_postgres else _SQLITE_V1)


SCHEMA = register(
    Schema(
        component="vas",
        store=STORE,
        migrations=(Migration(1, "vas_profiles table (the embedded store's original shape)", _v1_table),),
    )
)
