"""The embedded store never has two writers (issue 12, point 6).

`rapport serve --workers 2` without a database_url used to run two processes over the same SQLite files and
embedded Chroma: a forget on one worker left the other serving the user's text. Now it refuses to start with
a message naming the settings to use, and any second server over the same data dir is refused too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.soak import ROOT, RapportProcess, write_config
from proxy.app import create_app
from proxy.datadir_lock import DataDirInUse
from tests.conftest import rapport_settings


def test_serve_with_two_workers_on_the_embedded_store_refuses_to_start(tmp_path: Path, scripted_upstream: Any) -> None:
    config = write_config(tmp_path / "data", scripted_upstream.base_url, server={"workers": 2})
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port", "9"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "server.workers is 2" in said and "database_url" in said and "--workers 1" in said
    # The same through the command-line flag, over a config that asks for one worker.
    config_one = write_config(tmp_path / "data1", scripted_upstream.base_url)
    flagged = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_one), "--workers", "3", "--port", "9"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert flagged.returncode == 2 and "server.workers is 3" in " ".join((flagged.stdout + flagged.stderr).split())


def test_a_second_server_over_the_same_data_dir_is_refused(tmp_path: Path, scripted_upstream: Any) -> None:
    data = tmp_path / "data"
    config = write_config(data, scripted_upstream.base_url)
    first = RapportProcess(config, tmp_path / "first.log").start()
    try:
        second = RapportProcess(config, tmp_path / "second.log")
        with pytest.raises(RuntimeError, match="exited"):
            second.start()
        log = " ".join((tmp_path / "second.log").read_text().split())
        assert f"another Rapport server (pid {first.pid})" in log
        assert "database_url" in log
        # The first server is unharmed.
        assert httpx.get(f"{first.url}/readyz", timeout=10).status_code == 200
    finally:
        first.kill()
    # kill -9 frees the data dir: the kernel drops the lock with its holder.
    restarted = RapportProcess(config, tmp_path / "third.log").start()
    restarted.stop()


def test_in_process_apps_over_one_data_dir(tmp_path: Path, scripted_upstream: Any) -> None:
    settings = rapport_settings(tmp_path / "data", scripted_upstream.base_url)
    first = create_app(settings, plugins=())
    with pytest.raises(DataDirInUse, match="database_url"):
        create_app(rapport_settings(tmp_path / "data", scripted_upstream.base_url), plugins=())
    first.state.services.datadir_lock.release()
    again = create_app(rapport_settings(tmp_path / "data", scripted_upstream.base_url), plugins=())
    again.state.services.datadir_lock.release()
