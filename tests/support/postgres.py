"""A real PostgreSQL 16 with pgvector for tests (the `pgserver` wheel), and the two storage backends as one fixture.

pgserver runs the server on a unix socket inside its data dir. PostgreSQL refuses to run as root; pgserver
handles that itself: as root it creates (`useradd`) and runs the server as a system user `pgserver` and opens
the data dir's parent folders to it. scripts/bootstrap.sh creates that user up front on a fresh machine.
"""

from __future__ import annotations

import importlib
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from rapport.core.database import Database


class PostgresServer:
    """One server for a test session; `create_database` gives each test its own empty database."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI); pgserver only keeps a lock file there.
            warnings.simplefilter("ignore")
            import pgserver

            self._server: Any = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
        self.admin_url = str(self._server.get_uri("postgres"))
        self._admin = sa.create_engine(self.admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                                       isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)

    def url(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def outage(self) -> Iterator[None]:
        """The server down for the block (a fast shutdown: open sessions are cut, as in a crash or failover),
        then started again on the same socket and data, so URLs given out before keep working."""
        # pgserver makes its command wrappers at import (not visible to type checkers).
        pg_ctl: Any = vars(importlib.import_module("pgserver._commands"))["pg_ctl"]
        self._admin.dispose()
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)
        try:
            yield
        finally:
            with self._server._lock:
                self._server.ensure_postgres_running()

    def stop(self) -> None:
        self._admin.dispose()
        self._server.cleanup()


@dataclass
class Backend:
    """One storage backend under test: `url` names the database, `open()` gives a new `Database` on it (a new
    pool, as another replica would have); everything opened is closed at the end of the test."""

    name: str  # "sqlite" or "postgres"
    url: str
    _opened: list[Database] = field(default_factory=list)

    def open(self, **options: Any) -> Database:
        db = Database.open(self.url, **options)
        self._opened.append(db)
        return db

    def close(self) -> None:
        for db in self._opened:
            db.close()
        self._opened.clear()


@contextmanager
def backend(name: str, tmp_path: Path, server: PostgresServer | None) -> Iterator[Backend]:
    if name == "sqlite":
        made = Backend("sqlite", f"sqlite:///{tmp_path / 'store.sqlite3'}")
        try:
            yield made
        finally:
            made.close()
        return
    assert server is not None
    database = server.create_database()
    made = Backend("postgres", server.url(database))
    try:
        yield made
    finally:
        made.close()
        server.drop_database(database)
