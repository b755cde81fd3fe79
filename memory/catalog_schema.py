"""The memory catalog's tables and their migrations (see rapport/core/migrations.py for the scheme).

Version 1 is the two tables the SQLite catalog always created (`CREATE TABLE IF NOT EXISTS`, the same columns
and keys), so an existing `memory/catalog.sqlite3` is adopted as version 1 with its users and summaries intact.
Embedded, the catalog keeps its file under the data dir's `memory/` folder, hence the store name
`memory/catalog` (`Databases.for_store` puts it at `<data_dir>/memory/catalog.sqlite3`).
Times are DOUBLE PRECISION (the same REAL affinity on SQLite; PostgreSQL's REAL is too small for an epoch);
`user` is quoted because PostgreSQL reserves it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database
from rapport.core.migrations import Migration, Schema, register

STORE = "memory/catalog"

metadata = sa.MetaData()
users = sa.Table(
    "users",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("user", sa.Text, primary_key=True),
    sa.Column("items", sa.Integer, nullable=False),
    sa.Column("since_summary", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)
# The per-user forget generation (memory/generations.py): keyed by a hash of (tenant, user), so the row that
# outlives a forget holds no identifier of the user.
forget_generations = sa.Table(
    "memory_forget_generations",
    metadata,
    sa.Column("user_key", sa.Text, primary_key=True),
    sa.Column("generation", sa.Integer, nullable=False),
)
summaries = sa.Table(
    "summaries",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("user", sa.Text, primary_key=True),
    sa.Column("task", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("model", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
)
# What the store's vectors were built with (memory/embedding_meta.py): one row, written when the store is
# first served. A start with another model is refused: two 384-dimensional models answer each other's
# queries without any error, only with wrong neighbours.
embedding_model = sa.Table(
    "memory_embedding_model",
    metadata,
    sa.Column("scope", sa.Text, primary_key=True),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_digest", sa.Text, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("recorded_at", sa.Float, nullable=False),
)
# `rapport reindex`'s checkpoint: the users already re-embedded for the model being moved to. Keyed by a hash of
# (tenant, user), like the forget generations, so a forget leaves no identifier of the user here.
reindex_progress = sa.Table(
    "memory_reindex_progress",
    metadata,
    sa.Column("user_key", sa.Text, primary_key=True),
    sa.Column("target_digest", sa.Text, nullable=False),
    sa.Column("items", sa.Integer, nullable=False),
    sa.Column("done_at", sa.Float, nullable=False),
)


def _v1_tables(conn: Connection, db: Database) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE IF NOT EXISTS users (
            tenant TEXT NOT NULL,
            "user" TEXT NOT NULL,
            items INTEGER NOT NULL DEFAULT 0,
            since_summary INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, "user")
        )"""
    )
    conn.exec_driver_sql(
        """CREATE TABLE IF NOT EXISTS summaries (
            tenant TEXT NOT NULL,
            "user" TEXT NOT NULL,
            task TEXT NOT NULL,
            version INTEGER NOT NULL,
            text TEXT NOT NULL,
            item_count INTEGER NOT NULL,
            model TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, "user", task, version)
        )"""
    )


def _v2_forget_generations(conn: Connection, db: Database) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE IF NOT EXISTS memory_forget_generations (
            user_key TEXT NOT NULL PRIMARY KEY,
            generation INTEGER NOT NULL
        )"""
    )


def _v3_embedding_model(conn: Connection, db: Database) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE IF NOT EXISTS memory_embedding_model (
            scope TEXT NOT NULL PRIMARY KEY,
            model_name TEXT NOT NULL,
            model_digest TEXT NOT NULL,
            dim INTEGER NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL
        )"""
    )
    conn.exec_driver_sql(
        """CREATE TABLE IF NOT EXISTS memory_reindex_progress (
            user_key TEXT NOT NULL PRIMARY KEY,
            target_digest TEXT NOT NULL,
            items INTEGER NOT NULL,
            done_at DOUBLE PRECISION NOT NULL
        )"""
    )


SCHEMA = register(
    Schema(
        component="catalog",
        store=STORE,
        migrations=(
            Migration(1, "users and summaries tables (the embedded catalog's original shape)", _v1_tables),
            Migration(2, "per-user forget generations (a recording that raced a forget writes nothing)",
                      _v2_forget_generations),
            Migration(3, "the embedding model the vectors were built with, and the reindex checkpoint",
                      _v3_embedding_model),
        ),
    )
)
