"""What `rapport doctor` reports about the databases: connection, the pgvector extension, schema versions.

Details name where the database is (host and database) but never the URL itself: it may hold a password.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from rapport.core.database import Database, Databases, Dialect
from rapport.core.migrations import Schema, state


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def _scrub(text: str, secret: str | None) -> str:
    """An error message with the password cut out (drivers may quote the connection string)."""
    first = text.strip().splitlines()[0] if text.strip() else text
    return first.replace(secret, "***") if secret else first


def _pgvector(db: Database) -> Check:
    with db.read() as conn:
        installed = conn.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
        available = conn.execute(
            sa.text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
        ).scalar()
    if installed is not None:
        return Check("pgvector", True, f"installed, version {installed}")
    if available is not None:
        return Check("pgvector", True, f"available (version {available}); created by the first migration that needs it")
    return Check("pgvector", False, "the vector extension is not available on this server: install pgvector")


def check_databases(databases: Databases, schemas: Iterable[Schema], *, migrate_on_start: bool = True) -> list[Check]:
    """Connection, pgvector (PostgreSQL only) and each schema's version, one Check per line of `doctor`.

    A schema behind the code passes while replicas migrate at start; one newer than the code never does."""
    checks: list[Check] = []
    password = databases.config.url and sa.engine.make_url(databases.config.url).password
    secret = str(password) if password else None
    reached: dict[int, bool] = {}
    dialect: Dialect = "postgresql" if databases.shared else "sqlite"
    for schema in schemas:
        if not schema.applies_to(dialect):
            continue
        db = databases.for_store(schema.store)
        if id(db) not in reached:
            try:
                version = db.ping()
                checks.append(Check(f"database {db.label}", True, f"connected (server {version})"))
                reached[id(db)] = True
                if db.is_postgres:
                    checks.append(_pgvector(db))
            except Exception as exc:
                reached[id(db)] = False
                detail = _scrub(f"{exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}", secret)
                checks.append(Check(f"database {db.label}", False, detail))
        if not reached[id(db)]:
            continue
        try:
            found = state(db, schema)
        except Exception as exc:
            checks.append(Check(f"schema {schema.component}", False, _scrub(str(exc), secret)))
            continue
        if found.current > found.latest:
            detail = f"version {found.current} is newer than this Rapport knows ({found.latest}): upgrade Rapport"
        elif found.current < found.latest:
            detail = f"version {found.current}, this Rapport needs {found.latest}: run `rapport db upgrade`"
        else:
            detail = f"version {found.current} (latest)"
        ok = found.current <= found.latest if migrate_on_start else found.ok
        checks.append(Check(f"schema {schema.component}", ok, detail))
    return checks
