"""`database_url` and the database settings: validated at load, never echoed, passed through to the driver."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from memory.jobs import JobQueue
from proxy.services import Services
from proxy.settings import ConfigError, RapportSettings, load_settings
from proxy.stages.memory_plugin import build_shared
from tests.conftest import rapport_settings

PASSWORD = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"mysql://bob:{PASSWORD}@db.internal/rapport", "scheme 'mysql' is not supported"),
        (f"sqlite:///{PASSWORD}.db", "scheme 'sqlite' is not supported"),
        (f"bob:{PASSWORD} at db.internal", "not a valid URL"),
        (f"postgresql://bob:{PASSWORD}@db.internal:5432", "names no database"),
        (f"postgresql://bob:{PASSWORD}@db.internal/rapport?sslmode=sometimes", "sslmode must be one of"),
    ],
)
def test_a_malformed_database_url_fails_naming_the_field_without_the_password(
    url: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAPPORT_DATABASE_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "database_url" in message and why in message
    assert PASSWORD not in message
    # The chained pydantic error (what a traceback would print) does not carry it either.
    assert isinstance(caught.value.__cause__, ValidationError)
    assert PASSWORD not in str(caught.value.__cause__)
    with pytest.raises(ValidationError) as direct:
        RapportSettings(database_url=url)
    assert PASSWORD not in str(direct.value) and PASSWORD not in repr(direct.value)


def test_database_url_is_a_secret_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_DATABASE_URL", f"postgresql://bob:{PASSWORD}@db.internal/rapport")
    settings = load_settings()
    assert settings.shared_state
    assert PASSWORD not in repr(settings) and PASSWORD not in settings.model_dump_json()


def test_pool_size_and_sslmode_reach_the_engine(tmp_path: Path, postgres_url: str) -> None:
    url = f"{postgres_url}&sslmode=disable"
    settings = rapport_settings(tmp_path, "http://127.0.0.1:9/v1", database_url=url, database={"pool_size": 3})
    services = Services.build(settings)
    try:
        build_shared(services)
        assert services.databases is not None and services.databases.shared
        jobs: JobQueue = services.jobs
        assert jobs.db.engine.url.query["sslmode"] == "disable"
        assert jobs.db.engine.pool.size() == 3  # type: ignore[attr-defined]
        assert jobs.db.ping().startswith("16.")
        # Shared state: nothing of the job queue in the data dir.
        assert not (tmp_path / "jobs.sqlite3").exists()
    finally:
        services.keys.close()
        services.databases.close() if services.databases is not None else None
        if services.datadir_lock is not None:
            services.datadir_lock.release()


def test_unset_database_url_keeps_the_embedded_files(tmp_path: Path) -> None:
    settings = rapport_settings(tmp_path, "http://127.0.0.1:9/v1")
    services = Services.build(settings)
    try:
        build_shared(services)
        assert services.databases is not None and not services.databases.shared
        assert services.jobs.db.dialect == "sqlite"
        assert (tmp_path / "jobs.sqlite3").is_file()
    finally:
        services.keys.close()
        if services.databases is not None:
            services.databases.close()
        if services.datadir_lock is not None:
            services.datadir_lock.release()
