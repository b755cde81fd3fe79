"""The CLI and the settings object: config errors name the field path; keys are stored hashed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from proxy.settings import ConfigError, RapportSettings, load_settings
from rapport.core.database import Database
from tests.support.postgres import Backend


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run([sys.executable, "-m", "proxy.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_invalid_config_names_field_path(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("model_list:\n  - model_name: x\n    litellm_params:\n      timeout: -1\nserver:\n  port: 99999\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert "model_list.0.litellm_params.model" in message
    assert "server.port" in message


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "ok.yaml"
    config.write_text(
        "local: {enabled: false}\nmodel_list:\n  - model_name: gpt\n    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_KEY}\n"
        "    fallbacks: [local]\n  - model_name: local\n    litellm_params: {model: openai/x, api_base: 'http://127.0.0.1:1/v1'}\n"
    )
    monkeypatch.setenv("RAPPORT_SERVER__PORT", "9123")
    monkeypatch.setenv("OPENAI_KEY", "sk-from-env")
    settings = load_settings(config)
    assert "RAPPORT_CONFIG" not in os.environ, "loading a file must not leak into the environment"
    assert settings.server.port == 9123
    assert settings.default_model == "gpt"
    assert settings.model("gpt").litellm_params.resolved_api_key() == "sk-from-env"
    assert settings.model("gpt").fallbacks == ["local"]


def test_unknown_fallback_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        RapportSettings(
            local={"enabled": False},
            model_list=[{"model_name": "a", "litellm_params": {"model": "openai/a"}, "fallbacks": ["zzz"]}],
        )


def test_cli_doctor_fails_readably_on_bad_config(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("limits:\n  max_n: 0\n")
    result = run_cli("doctor", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "limits.max_n" in result.stderr


def test_cli_doctor_reports_unreachable_upstream(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'd'}\nlocal: {{enabled: false}}\nmodel_list:\n  - model_name: m\n"
        "    litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:9/v1'}\n"
    )
    result = run_cli("doctor", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert "upstream m" in result.stderr and "unreachable" in result.stderr


def test_cli_keys_lifecycle_stores_only_hashes(tmp_path: Path, storage: Backend):
    config = tmp_path / "c.yaml"
    # The embedded default keeps keys in the data dir's keys.sqlite3; with database_url, in that database.
    shared = f"database_url: '{storage.url}'\n" if storage.name == "postgres" else ""
    config.write_text(f"data_dir: {tmp_path / 'd'}\nlocal: {{enabled: false}}\n{shared}")
    created = run_cli("keys", "create", "--name", "ci", "--tenant", "acme", "--config", str(config), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    plain = created.stdout.strip().splitlines()[-1]
    assert plain.startswith("rk-")
    assert (tmp_path / "d" / "keys.sqlite3").exists() == (storage.name == "sqlite")
    db = storage.open() if shared else Database.sqlite(tmp_path / "d" / "keys.sqlite3")
    try:
        with db.read() as conn:
            rows = [repr(tuple(row)) for row in conn.execute(sa.text("SELECT * FROM api_keys"))]
            key_id = conn.execute(sa.text("SELECT key_id FROM api_keys")).scalar_one()
    finally:
        db.close()
    assert plain not in "\n".join(rows), "the plain key must never be stored"
    if not shared:
        with sqlite3.connect(tmp_path / "d" / "keys.sqlite3") as file:
            assert plain not in "\n".join(file.iterdump()), "the plain key must never be in the file"
        file.close()
    listed = run_cli("keys", "list", "--config", str(config), cwd=tmp_path)
    assert key_id in listed.stdout and "acme" in listed.stdout
    revoked = run_cli("keys", "revoke", key_id, "--config", str(config), cwd=tmp_path)
    assert revoked.returncode == 0
    again = run_cli("keys", "revoke", key_id, "--config", str(config), cwd=tmp_path)
    assert again.returncode == 1


def test_cli_version(tmp_path: Path):
    result = run_cli("version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("rapport ")


def test_cli_doctor_checks_the_database_and_never_shows_its_password(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'd'}\nlocal: {{enabled: false}}\nmodel_list: []\n"
        "database_url: postgresql://rapport:s3cret-pw@127.0.0.1:9/rapport\n"
    )
    result = run_cli("doctor", "--config", str(config), cwd=tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 1
    assert "database postgresql://127.0.0.1:9/rapport" in " ".join(said.split()) and "FAIL" in said
    assert "s3cret-pw" not in said and "rapport:s3cret" not in said
