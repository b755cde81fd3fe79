"""RPM's tables (history, features, factors, reasoning paths, build progress) and their migrations.

Version 1 on SQLite is the DDL the embedded RPM store always ran (`CREATE TABLE IF NOT EXISTS`, the same
columns, keys and indexes), so an existing `rpm/rpm.sqlite3` is adopted as version 1 with its rows intact.
On PostgreSQL it is the same shape in that dialect: identity ids, BYTEA vectors, DOUBLE PRECISION times
(PostgreSQL's REAL cannot hold an epoch to the second), `user` quoted (reserved there), and the tables named
`rpm_*`: one shared database holds every store, and `entries` or `paths` alone would not say whose they are.
Version 2 indexes paths by user, which a forget deletes by. Version 3 adds the issued responses that feedback
refers to (reasoning/rpm/feedback_store.py). Version 4 adds a forget generation per user (`forgets` /
`rpm_forgets`, keyed by a digest of tenant and user, so the row that outlives a forget names no one): a response
remembered by a request that began before the user's forget is not written after it.

Embedded, the file stays where it always was, `<data_dir>/rpm/rpm.sqlite3` (store name `rpm/rpm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database, Dialect
from rapport.core.migrations import Migration, Schema, register

STORE = "rpm/rpm"
# Table names per backend: today's on SQLite, prefixed in the shared PostgreSQL database.
PREFIX: dict[Dialect, str] = {"sqlite": "", "postgresql": "rpm_"}


@dataclass(frozen=True, slots=True)
class RPMTables:
    entries: sa.Table
    features: sa.Table
    factors: sa.Table
    paths: sa.Table
    builds: sa.Table
    # Responses RPM conditioned, kept (bounded) so that the user's feedback on one becomes history.
    issued: sa.Table


def _tables(prefix: str) -> RPMTables:
    metadata = sa.MetaData()
    entries = sa.Table(
        f"{prefix}entries",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("task", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("skip_reason", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("input_vec", sa.LargeBinary),
    )
    features = sa.Table(
        f"{prefix}features",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entry_id", sa.Integer, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("extractor", sa.Text, nullable=False),
        sa.Column("factor_id", sa.Integer),
        sa.Column("name_vec", sa.LargeBinary, nullable=False),
        sa.Column("feat_vec", sa.LargeBinary, nullable=False),
    )
    factors = sa.Table(
        f"{prefix}factors",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("members", sa.Text, nullable=False),
        sa.Column("stats", sa.Text, nullable=False),
        sa.Column("centroid", sa.LargeBinary, nullable=False),
    )
    paths = sa.Table(
        f"{prefix}paths",
        metadata,
        sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("vec", sa.LargeBinary),
    )
    builds = sa.Table(
        f"{prefix}builds",
        metadata,
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("user", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    issued = sa.Table(
        f"{prefix}issued",
        metadata,
        sa.Column("tenant", sa.Text, primary_key=True),
        sa.Column("user", sa.Text, primary_key=True),
        sa.Column("id", sa.Text, primary_key=True),
        # Random per issue: the history entries a feedback wrote carry it in their `source`, so a second feedback
        # finds (and replaces) them, and an upstream that reuses a response id does not reach an older answer's.
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("task", sa.Text),
        sa.Column("feedback", sa.Text),
        sa.Column("feedback_at", sa.Float),
    )
    return RPMTables(entries, features, factors, paths, builds, issued)


TABLES: dict[Dialect, RPMTables] = {dialect: _tables(prefix) for dialect, prefix in PREFIX.items()}


def _forgets(prefix: str) -> sa.Table:
    # Not in RPMTables: its rows are no user's data (no tenant or user column), and they must outlive a forget.
    return sa.Table(
        f"{prefix}forgets",
        sa.MetaData(),
        sa.Column("user_key", sa.Text, primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
    )


FORGETS: dict[Dialect, sa.Table] = {dialect: _forgets(prefix) for dialect, prefix in PREFIX.items()}

# The embedded store's DDL as it always was (reasoning/rpm/store.py before the move), run verbatim on SQLite.
_SQLITE_V1 = (
    """CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, user TEXT NOT NULL,
    input TEXT NOT NULL, response TEXT NOT NULL, task TEXT, source TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', skip_reason TEXT, created_at REAL NOT NULL, input_vec BLOB)""",
    "CREATE INDEX IF NOT EXISTS entries_user ON entries(tenant, user, status)",
    """CREATE TABLE IF NOT EXISTS features (
    id INTEGER PRIMARY KEY AUTOINCREMENT, entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
    tenant TEXT NOT NULL, user TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, evidence TEXT NOT NULL,
    extractor TEXT NOT NULL, factor_id INTEGER, name_vec BLOB NOT NULL, feat_vec BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS features_user ON features(tenant, user)",
    "CREATE INDEX IF NOT EXISTS features_entry ON features(entry_id)",
    """CREATE TABLE IF NOT EXISTS factors (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, user TEXT NOT NULL, name TEXT NOT NULL,
    members TEXT NOT NULL, stats TEXT NOT NULL, centroid BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS factors_user ON factors(tenant, user)",
    """CREATE TABLE IF NOT EXISTS paths (
    entry_id INTEGER PRIMARY KEY REFERENCES entries(id) ON DELETE CASCADE, tenant TEXT NOT NULL,
    user TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL, vec BLOB)""",
    """CREATE TABLE IF NOT EXISTS builds (
    tenant TEXT NOT NULL, user TEXT NOT NULL, state TEXT NOT NULL, done INTEGER NOT NULL, total INTEGER NOT NULL,
    message TEXT, updated_at REAL NOT NULL, PRIMARY KEY (tenant, user))""",
)

# The same tables in PostgreSQL's dialect.
_POSTGRES_V1 = (
    """CREATE TABLE IF NOT EXISTS rpm_entries (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tenant TEXT NOT NULL, "user" TEXT NOT NULL,
    input TEXT NOT NULL, response TEXT NOT NULL, task TEXT, source TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', skip_reason TEXT, created_at DOUBLE PRECISION NOT NULL,
    input_vec BYTEA)""",
    'CREATE INDEX IF NOT EXISTS rpm_entries_user ON rpm_entries (tenant, "user", status)',
    """CREATE TABLE IF NOT EXISTS rpm_features (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    entry_id BIGINT NOT NULL REFERENCES rpm_entries(id) ON DELETE CASCADE,
    tenant TEXT NOT NULL, "user" TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, evidence TEXT NOT NULL,
    extractor TEXT NOT NULL, factor_id BIGINT, name_vec BYTEA NOT NULL, feat_vec BYTEA NOT NULL)""",
    'CREATE INDEX IF NOT EXISTS rpm_features_user ON rpm_features (tenant, "user")',
    "CREATE INDEX IF NOT EXISTS rpm_features_entry ON rpm_features (entry_id)",
    """CREATE TABLE IF NOT EXISTS rpm_factors (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tenant TEXT NOT NULL, "user" TEXT NOT NULL,
    name TEXT NOT NULL, members TEXT NOT NULL, stats TEXT NOT NULL, centroid BYTEA NOT NULL)""",
    'CREATE INDEX IF NOT EXISTS rpm_factors_user ON rpm_factors (tenant, "user")',
    """CREATE TABLE IF NOT EXISTS rpm_paths (
    entry_id BIGINT PRIMARY KEY REFERENCES rpm_entries(id) ON DELETE CASCADE, tenant TEXT NOT NULL,
    "user" TEXT NOT NULL, text TEXT NOT NULL, source TEXT NOT NULL, vec BYTEA)""",
    """CREATE TABLE IF NOT EXISTS rpm_builds (
    tenant TEXT NOT NULL, "user" TEXT NOT NULL, state TEXT NOT NULL, done INTEGER NOT NULL, total INTEGER NOT NULL,
    message TEXT, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant, "user"))""",
)


def _v1_tables(conn: Connection, db: Database) -> None:
    for statement in _POSTGRES_V1 if db.is_postgres else _SQLITE_V1:
        conn.exec_driver_sql(statement)


def _v2_paths_by_user(conn: Connection, db: Database) -> None:
    table = TABLES[db.dialect].paths.name
    conn.exec_driver_sql(f'CREATE INDEX IF NOT EXISTS {table}_user ON {table} (tenant, "user")')


_ISSUED_V3 = (
    """CREATE TABLE IF NOT EXISTS {table} (
    tenant TEXT NOT NULL, "user" TEXT NOT NULL, id TEXT NOT NULL, key TEXT NOT NULL, created_at {time} NOT NULL,
    input TEXT NOT NULL, answer TEXT NOT NULL, task TEXT, feedback TEXT, feedback_at {time},
    PRIMARY KEY (tenant, "user", id))""",
    # The per-user cap trims a user's oldest; the retention purge takes the oldest of all.
    'CREATE INDEX IF NOT EXISTS {table}_user_created ON {table} (tenant, "user", created_at)',
    "CREATE INDEX IF NOT EXISTS {table}_created ON {table} (created_at)",
)


def _v3_issued(conn: Connection, db: Database) -> None:
    table = TABLES[db.dialect].issued.name
    time_type = "DOUBLE PRECISION" if db.is_postgres else "REAL"
    for statement in _ISSUED_V3:
        conn.exec_driver_sql(statement.format(table=table, time=time_type))


def _v4_forgets(conn: Connection, db: Database) -> None:
    table = FORGETS[db.dialect].name
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {table} (user_key TEXT NOT NULL PRIMARY KEY, generation INTEGER NOT NULL)"
    )


SCHEMA = register(
    Schema(
        component="rpm",
        store=STORE,
        migrations=(
            Migration(1, "history, features, factors, paths and builds (the embedded store's original shape)",
                      _v1_tables),
            Migration(2, "paths indexed by (tenant, user), as a forget deletes them", _v2_paths_by_user),
            Migration(3, "issued responses, which a user's feedback turns into history", _v3_issued),
            Migration(4, "a forget generation per user, checked as an issued response is written", _v4_forgets),
        ),
    )
)
