"""Versioned schema migrations, one ordered list per store component, recorded in a `rapport_schema` table.

Why not Alembic: each store (jobs, keys, catalog, RPM, VAS, vectors) lives in its own package and, embedded, in
its own SQLite file, and each must migrate itself when it is opened, with no script directory or env.py on disk
next to an installed wheel. What Rapport needs is small and exact: per-component versions, every pending step
and the version bump in one transaction (PostgreSQL and SQLite both run DDL inside transactions), replicas that
start together serialized by an advisory lock, and a refusal to run on a schema newer than the code knows.
An ordered list of functions per component, applied under that lock, gives exactly that.

A store declares `SCHEMA = register(Schema("jobs", "jobs", (Migration(1, ...), Migration(2, ...))))` and calls
`ensure(db, SCHEMA)` when it is built; `rapport db upgrade` applies every registered schema.
Never edit a released migration: add the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rapport.core.database import Database, DatabaseUnavailable, Dialect

VERSION_TABLE = "rapport_schema"
# One lock for every component: migrations are rare and short, and one lock cannot deadlock with another.
MIGRATION_LOCK = "rapport.schema-migrations"


class SchemaError(RuntimeError):
    """The database's schema does not match what this code can serve."""


class SchemaTooNew(SchemaError):
    """The database was migrated by a newer Rapport: this replica must not write to it."""


class SchemaOutdated(SchemaError):
    """The schema is older than the code and migrating at start is off: run `rapport db upgrade`."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    summary: str
    # Runs inside the migration transaction; `db` tells the dialect where SQL differs.
    apply: Callable[[Connection, Database], None]


@dataclass(frozen=True, slots=True)
class Schema:
    component: str
    # The store whose database holds it (embedded: the SQLite file `<store>.sqlite3`).
    store: str
    migrations: tuple[Migration, ...]
    # The backends the component lives on: a PostgreSQL-only one (pgvector) is skipped on the embedded default.
    backends: tuple[Dialect, ...] = ("sqlite", "postgresql")

    def __post_init__(self) -> None:
        versions = [m.version for m in self.migrations]
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"schema {self.component}: migrations must be numbered 1..n in order, got {versions}")

    @property
    def latest(self) -> int:
        return len(self.migrations)

    def applies_to(self, dialect: Dialect) -> bool:
        return dialect in self.backends


@dataclass(frozen=True, slots=True)
class SchemaState:
    component: str
    current: int  # 0: never migrated
    latest: int

    @property
    def ok(self) -> bool:
        return self.current == self.latest


_REGISTRY: dict[str, Schema] = {}


def register(schema: Schema) -> Schema:
    """Make a schema known to `rapport db upgrade` and the doctor check (called at the store module's import)."""
    _REGISTRY[schema.component] = schema
    return schema


def registered() -> list[Schema]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


_version_table = sa.Table(
    VERSION_TABLE,
    sa.MetaData(),
    sa.Column("component", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def _current(conn: Connection, component: str) -> int:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return 0
    value = conn.execute(
        sa.select(_version_table.c.version).where(_version_table.c.component == component)
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def _too_new(schema: Schema, current: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"the {schema.component} schema in the database is at version {current}, newer than this Rapport "
        f"knows (version {schema.latest}): it was migrated by a newer release. Upgrade this replica; it "
        "will not write to a schema it does not know."
    )


def state(db: Database, schema: Schema) -> SchemaState:
    with db.read() as conn:
        return SchemaState(schema.component, _current(conn, schema.component), schema.latest)


def migrate(db: Database, schema: Schema) -> tuple[int, int]:
    """Apply the schema's pending migrations in one transaction; returns (version before, version after).

    Under the migration advisory lock, so replicas that start together apply each step once; the second one
    finds the work done.
    """
    if not schema.applies_to(db.dialect):
        raise SchemaError(f"the {schema.component} store needs {' or '.join(schema.backends)}, not {db.dialect}")
    with db.write() as conn:
        db.lock(conn, MIGRATION_LOCK)
        _version_table.create(conn, checkfirst=True)
        before = _current(conn, schema.component)
        if before > schema.latest:
            raise _too_new(schema, before)
        for migration in schema.migrations[before:]:
            migration.apply(conn, db)
        if before != schema.latest:
            row = {"component": schema.component, "version": schema.latest, "updated_at": time.time()}
            stmt = db.insert(_version_table).values(**row)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["component"], set_={"version": row["version"], "updated_at": row["updated_at"]}
                )
            )
        return before, schema.latest


def ensure(db: Database, schema: Schema, *, migrate_on_start: bool = True) -> None:
    """What a store calls when it is built: migrate (when allowed), else require the latest version.
    An unreachable database is a DatabaseUnavailable that names where, never the URL."""
    try:
        if migrate_on_start:
            migrate(db, schema)
            return
        current = state(db, schema)
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(db.label, exc) from exc
    if current.current > schema.latest:
        raise _too_new(schema, current.current)
    if current.current < schema.latest:
        raise SchemaOutdated(
            f"the {schema.component} schema is at version {current.current}, this Rapport needs "
            f"{schema.latest}: run `rapport db upgrade` (database.migrate_on_start is off)"
        )


def open_store(database: Database | Path | str, schema: Schema, *, migrate: bool = True) -> tuple[Database, bool]:
    """A store's database with its schema ensured, and whether the store owns it.

    A path is the embedded convenience for tools and tests: the store then owns that SQLite file and closes
    it (here too, when the schema cannot be ensured). A `Database` belongs to the server's `Databases`.
    """
    owned = not isinstance(database, Database)
    db = database if isinstance(database, Database) else Database.sqlite(Path(database))
    try:
        ensure(db, schema, migrate_on_start=migrate)
    except BaseException:
        if owned:
            db.close()
        raise
    return db, owned
