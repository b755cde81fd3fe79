"""Versioned schemas: replicas migrating together, a schema newer than the code, legacy data dirs, `rapport db`."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from memory.job_schema import SCHEMA
from memory.jobs import JobQueue
from proxy.cli import app
from rapport.core.database import Database, DatabaseConfig, Databases, DatabaseUnavailable
from rapport.core.dbcheck import check_databases
from rapport.core.migrations import Migration, Schema, SchemaOutdated, SchemaTooNew, migrate, state
from tests.support.postgres import Backend, PostgresServer


def set_version(db: Database, version: int) -> None:
    with db.write() as conn:
        conn.execute(sa.text("UPDATE rapport_schema SET version = :v WHERE component = 'jobs'"), {"v": version})


def test_replicas_migrating_at_once_apply_each_step_once(storage: Backend) -> None:
    databases = [storage.open() for _ in range(4)]
    barrier = threading.Barrier(len(databases))
    outcomes: list[tuple[int, int] | BaseException] = []

    def start(db: Database) -> None:
        barrier.wait()
        try:
            outcomes.append(migrate(db, SCHEMA))
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes, key=str) == sorted([(0, 2)] + [(2, 2)] * 3, key=str)
    assert state(databases[0], SCHEMA).current == SCHEMA.latest


@pytest.mark.parametrize("migrate_on_start", [True, False])
def test_a_schema_newer_than_the_code_is_refused(storage: Backend, migrate_on_start: bool) -> None:
    db = storage.open()
    migrate(db, SCHEMA)
    set_version(db, SCHEMA.latest + 1)
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA.latest + 1}, newer than this Rapport knows"):
        JobQueue(db, migrate=migrate_on_start)


def test_an_outdated_schema_without_migrate_on_start_names_the_upgrade_command(storage: Backend) -> None:
    db = storage.open()
    migrate(db, SCHEMA)
    set_version(db, 1)
    with pytest.raises(SchemaOutdated, match="rapport db upgrade"):
        JobQueue(db, migrate=False)


async def test_a_jobs_file_written_by_the_lease_less_queue_is_adopted(tmp_path: Path) -> None:
    """An existing data dir keeps its jobs: the old table becomes version 1, then gains leases."""
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL, tenant TEXT NOT NULL,
            user TEXT NOT NULL, dedupe_key TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL, progress REAL NOT NULL DEFAULT 0, message TEXT, error TEXT,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, finished_at REAL,
            run_after REAL NOT NULL DEFAULT 0);
            CREATE INDEX jobs_dedupe ON jobs (dedupe_key, status);"""
        )
        rows = [
            ("p1", "pending", "k", 1.0), ("p2", "pending", "k", 2.0), ("r1", "running", None, 3.0),
            ("s1", "succeeded", "k", 0.5),
        ]
        conn.executemany(
            "INSERT INTO jobs (id, kind, payload, tenant, user, dedupe_key, status, attempts, max_attempts,"
            " created_at, updated_at) VALUES (?, 'work', '{}', 't', 'u', ?, ?, 1, 3, ?, ?)",
            [(i, key, status, ts, ts) for i, status, key, ts in rows],
        )
    db = Database.sqlite(path)
    try:
        queue = JobQueue(db)
        assert state(db, SCHEMA).current == SCHEMA.latest
        found = {job.id: job.status for job in (await queue.list())[0]}
        # The duplicate pending job of one key collapses into the oldest; the orphaned running one is pending.
        assert found == {"p1": "pending", "r1": "pending", "s1": "succeeded"}
        assert await queue.enqueue("work", {}, tenant="t", user="u", dedupe_key="k") == "p1"
        await queue.close()
    finally:
        db.close()


def test_db_upgrade_command_and_doctor_check(postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    name = postgres_server.create_database()
    try:
        # Trust authentication ignores the password, so a URL with one connects: it must never be shown.
        url = sa.engine.make_url(postgres_server.url(name)).set(password="s3cret-pw").render_as_string(hide_password=False)
        monkeypatch.setenv("RAPPORT_DATABASE_URL", url)
        runner = CliRunner()
        first = runner.invoke(app, ["db", "upgrade"])
        assert first.exit_code == 0, first.output
        assert "jobs: migrated 0 -> 2" in first.output
        again = runner.invoke(app, ["db", "upgrade"])
        assert again.exit_code == 0 and "jobs: up to date at version 2" in again.output
        assert "s3cret-pw" not in first.output + again.output

        databases = Databases(DatabaseConfig(url=url, data_dir=Path("unused")))
        try:
            checks = {check.name: check for check in check_databases(databases, [SCHEMA])}
            assert all(check.ok for check in checks.values()), checks
            # `db upgrade` migrated the vectors component too, which creates the extension.
            assert "memory_vectors: migrated 0 -> " in first.output
            assert checks["pgvector"].detail == "installed, version 0.6.2"
            assert checks["schema jobs"].detail == "version 2 (latest)"
            assert not any("s3cret-pw" in f"{c.name} {c.detail}" for c in checks.values())
            set_version(databases.for_store("jobs"), SCHEMA.latest + 1)
            newer = {check.name: check for check in check_databases(databases, [SCHEMA])}
            assert not newer["schema jobs"].ok and "newer than this Rapport knows" in newer["schema jobs"].detail
        finally:
            databases.close()
        refused = runner.invoke(app, ["db", "upgrade"])
        assert refused.exit_code == 1 and "newer than this Rapport" in " ".join(refused.output.split())
    finally:
        postgres_server.drop_database(name)


def test_doctor_check_reports_an_unreachable_database_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://rapport:s3cret-pw@/rapport?host={tmp_path}&connect_timeout=2"
    databases = Databases(DatabaseConfig(url=url, data_dir=tmp_path))
    try:
        checks = check_databases(databases, [SCHEMA])
    finally:
        databases.close()
    assert [c.ok for c in checks] == [False]
    assert checks[0].name == f"database postgresql://{tmp_path}/rapport"
    assert "s3cret-pw" not in checks[0].detail and "OperationalError" in checks[0].detail


def test_db_upgrade_on_the_embedded_default_migrates_the_data_dir_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAPPORT_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "jobs: migrated 0 -> 2" in result.output
    db = Database.sqlite(tmp_path / "jobs.sqlite3")
    try:
        assert state(db, SCHEMA).current == SCHEMA.latest
    finally:
        db.close()
    # A PostgreSQL-only component (pgvector) is not part of the embedded default: no check, no file.
    vectors = Schema("vectors", "vectors", (Migration(1, "noop", lambda conn, db: None),), backends=("postgresql",))
    databases = Databases(DatabaseConfig(url=None, data_dir=tmp_path))
    try:
        names = [check.name for check in check_databases(databases, [SCHEMA, vectors])]
    finally:
        databases.close()
    assert names == ["database sqlite jobs.sqlite3", "schema jobs"]
    assert not (tmp_path / "vectors.sqlite3").exists()


def test_an_unreachable_database_at_start_is_a_readable_error_without_the_password(tmp_path: Path) -> None:
    db = Database.postgres(f"postgresql://rapport:s3cret-pw@/rapport?host={tmp_path}", connect_timeout_s=2)
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            JobQueue(db)
    finally:
        db.close()
    message = str(caught.value)
    assert message.startswith(f"cannot reach the database at postgresql://{tmp_path}/rapport (OperationalError)")
    assert "s3cret-pw" not in message
