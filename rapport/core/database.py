"""The one way Rapport's stores reach a database: SQLAlchemy Core over PostgreSQL (shared) or SQLite (embedded).

The server makes one `Databases` from its settings and hands each store the `Database` for that store:

- `database_url` unset (the embedded default): one SQLite file per store under the data dir, named as the
  stores always named them (`jobs.sqlite3`, ...), so existing data dirs keep working;
- `database_url` a `postgresql://` URL: every store gets the same `Database`, one connection pool, and any
  number of replicas share it.

Stores never open connections from a URL or path they read themselves, and never call a database on the event
loop: `Database.run` executes a blocking function in the database's own threads (as many as it has
connections, so a thread never waits for the pool).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

T = TypeVar("T")
P = ParamSpec("P")
Dialect = Literal["sqlite", "postgresql"]

POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Seconds a SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_S = 10.0


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached. Says where (host and database, never the URL) and the driver's error
    class; the driver's own message is kept as the cause."""

    def __init__(self, label: str, error: BaseException) -> None:
        orig = getattr(error, "orig", None) or error
        super().__init__(f"cannot reach the database at {label} ({orig.__class__.__name__}): check database_url "
                         "and that the server is up (`rapport doctor` checks it)")


class DatabaseURLError(ValueError):
    """A database URL that Rapport cannot use. The message never contains the URL: it may hold a password."""


def parse_postgres_url(raw: str) -> URL:
    """Validate a user-given database URL and return it for the psycopg 3 driver.

    Accepted: `postgresql://` or `postgresql+psycopg://`, with a database name; `sslmode` (and any other libpq
    parameter in the query) is passed through to the driver unchanged.
    """
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        # SQLAlchemy's own message quotes the whole string, password included: say what is wrong instead.
        raise DatabaseURLError("not a valid URL (expected postgresql://user:password@host:port/dbname)") from None
    if url.drivername not in POSTGRES_SCHEMES:
        raise DatabaseURLError(
            f"scheme {url.drivername!r} is not supported: use postgresql:// (the embedded SQLite default needs "
            "no URL: leave database_url unset)"
        )
    if not url.database:
        raise DatabaseURLError("the URL names no database (postgresql://user:password@host:port/dbname)")
    sslmode = url.query.get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise DatabaseURLError(f"sslmode must be one of {', '.join(SSL_MODES)}")
    if url.port is not None and not 0 < url.port < 65536:
        raise DatabaseURLError("the port is out of range")
    return url.set(drivername="postgresql+psycopg")


def redact(url: URL) -> str:
    """Where a database is, for logs and `doctor`: never the password (nor the user name)."""
    host = url.host or url.query.get("host") or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"postgresql://{host}{port}/{url.database}"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """What `Databases` needs, built by the server from its settings (kept free of the settings classes)."""

    url: str | None  # a postgresql URL (a secret), or None for the embedded SQLite default
    data_dir: Path
    pool_size: int = 5
    max_overflow: int = 5
    pool_timeout_s: float = 10.0
    connect_timeout_s: int = 5


class Database:
    """One database (a SQLite file, or a PostgreSQL database) with its connection pool and its threads."""

    def __init__(self, engine: Engine, *, label: str, threads: int) -> None:
        self.engine = engine
        self.label = label
        self.dialect: Dialect = "postgresql" if engine.dialect.name == "postgresql" else "sqlite"
        self._executor = ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="rapport-db")
        self._closed = False
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def sqlite(cls, path: Path | str, *, pool_size: int = 5) -> Database:
        """An embedded SQLite file: WAL, synchronous=FULL (a commit is on disk when acknowledged)."""
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            f"sqlite:///{file}",
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            pool_size=pool_size,
            max_overflow=0,
        )
        _sqlite_transactions(engine)
        _switch_to_wal(engine)
        return cls(engine, label=f"sqlite {file.name}", threads=pool_size)

    @classmethod
    def postgres(
        cls,
        url: str | URL,
        *,
        pool_size: int = 5,
        max_overflow: int = 5,
        pool_timeout_s: float = 10.0,
        connect_timeout_s: int = 5,
    ) -> Database:
        parsed = parse_postgres_url(url) if isinstance(url, str) else url.set(drivername="postgresql+psycopg")
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = connect_timeout_s
        engine = sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout_s,
            # A connection the server dropped (restart, failover) is replaced on checkout, so a replica
            # recovers from a database outage without a restart.
            pool_pre_ping=True,
            connect_args=connect_args,
        )
        return cls(engine, label=redact(parsed), threads=pool_size + max_overflow)

    @classmethod
    def open(cls, url: str, **options: Any) -> Database:
        """From a URL: `sqlite:///path` (embedded, for tools and tests) or a PostgreSQL URL."""
        if url.startswith("sqlite:///"):
            return cls.sqlite(url.removeprefix("sqlite:///"), pool_size=options.get("pool_size", 5))
        return cls.postgres(url, **options)

    # -- transactions -------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed on exit. On SQLite it takes the write lock at BEGIN
        (BEGIN IMMEDIATE), so a read-then-write inside it cannot interleave with another writer."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite a deferred BEGIN, so readers never wait for the write lock."""
        with self.engine.connect() as conn:
            conn.execution_options(rapport_read=True)
            with conn.begin():
                yield conn

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking database work in this database's threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    # -- dialect helpers ----------------------------------------------------------------------------

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def now(self) -> sa.ColumnElement[float]:
        """The database's clock in epoch seconds. Leases compare against this one clock, so replicas whose
        clocks disagree still agree on when a lease expired."""
        if self.is_postgres:
            return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        # julianday('now') has millisecond precision; the offset turns Julian days into Unix seconds.
        return sa.cast((sa.func.julianday("now") - 2440587.5) * 86400.0, sa.Float)

    def lock(self, conn: Connection, name: str) -> None:
        """Serialize with every other process doing the same `name` until this transaction ends.

        PostgreSQL: a transaction-scoped advisory lock. SQLite: the write transaction already holds the
        file's only write lock (BEGIN IMMEDIATE), which is the same guarantee.
        """
        if self.is_postgres:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has `on_conflict_do_nothing/do_update` on both."""
        if self.is_postgres:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def ping(self) -> str:
        """Connect and answer the server's version (raises when the database cannot be reached)."""
        with self.read() as conn:
            if self.is_postgres:
                return str(conn.execute(sa.text("SHOW server_version")).scalar_one())
            return str(conn.execute(sa.text("SELECT sqlite_version()")).scalar_one())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.label})"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not the stdlib driver, decide where transactions begin (SQLAlchemy's own recipe),
    and make a write transaction take the write lock at once."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get("rapport_read", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _switch_to_wal(engine: Engine) -> None:
    """Put the file in WAL mode (persistent in the file) once, before the pool's connections write.

    Switching needs the file's exclusive lock: a connection doing it while another holds a write transaction
    in the old journal mode is refused at once (SQLite's deadlock rule, no busy wait), so it is done here,
    retried while another process is creating the same file."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            # The driver's own connection: outside any transaction (SQLAlchemy's would begin one).
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.close()
                return
            finally:
                raw.close()
        except (OperationalError, sqlite3.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Databases:
    """The databases of one server: made once from its settings, asked by each store for its `Database`."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self._url = parse_postgres_url(config.url) if config.url is not None else None
        self._shared: Database | None = None
        self._files: dict[str, Database] = {}
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """True when all state lives in one PostgreSQL database that replicas share."""
        return self._url is not None

    def describe(self) -> str:
        return redact(self._url) if self._url is not None else f"embedded SQLite under {self.config.data_dir}"

    def for_store(self, store: str) -> Database:
        """The database of one store: the shared PostgreSQL one, or the store's own SQLite file
        (`<data_dir>/<store>.sqlite3`)."""
        with self._lock:
            if self._url is not None:
                if self._shared is None:
                    cfg = self.config
                    self._shared = Database.postgres(
                        self._url,
                        pool_size=cfg.pool_size,
                        max_overflow=cfg.max_overflow,
                        pool_timeout_s=cfg.pool_timeout_s,
                        connect_timeout_s=cfg.connect_timeout_s,
                    )
                return self._shared
            if store not in self._files:
                self._files[store] = Database.sqlite(self.config.data_dir / f"{store}.sqlite3")
            return self._files[store]

    def opened(self) -> list[Database]:
        with self._lock:
            return [self._shared] if self._shared is not None else list(self._files.values())

    def close(self) -> None:
        for db in self.opened():
            db.close()
        with self._lock:
            self._shared = None
            self._files.clear()
