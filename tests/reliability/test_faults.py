"""Faults beyond the upstream (issue 6 item 6): the Chroma server goes away while Rapport serves.

Upstream faults (5xx, 429, timeouts, unreachable, slow and cut streams, client disconnects) are covered in
tests/proxy/test_errors.py. Here a real Chroma server is started, used, killed and restarted under a running
Rapport: with `degrade_on_store_failure` it keeps answering without personalization and says so in
`X-Rapport-Degraded`; without it, it answers 503; `/readyz` reports the store; recovery needs no restart.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import free_port

CHROMA = shutil.which("chroma", path=str(Path(__file__).resolve().parents[2] / ".venv" / "bin")) or shutil.which("chroma")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ChromaServer:
    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.process: subprocess.Popen[bytes] | None = None

    def _up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> ChromaServer:
        assert CHROMA, "the chroma CLI (chromadb) is not installed"
        self.process = subprocess.Popen(
            [CHROMA, "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, 60, "the Chroma server")
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None
        wait_for(lambda: not self._up(), 10, "the Chroma server to go away")


@pytest.fixture()
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path / "chroma", free_port()).start()
    yield server
    server.kill() if server.process is not None else None


def chat(rapport: Any, text: str, user: str = "carol") -> httpx.Response:
    with httpx.Client(timeout=60) as client:
        return client.post(
            f"{rapport.base_url}/chat/completions",
            headers={"authorization": f"Bearer {rapport.api_key}", "x-rapport-user": user},
            json={"model": "test-model", "messages": [{"role": "user", "content": text}]},
        )


def _sent_for(upstream: Any, text: str) -> list[Any]:
    # Background work (RPM learning from exchanges) also calls the upstream: find the chat's own request.
    return [r for r in upstream.requests if (r.json.get("messages") or [{}])[-1].get("content") == text]


def system_prompt(upstream: Any, text: str) -> str:
    sent = _sent_for(upstream, text)
    assert sent, f"no upstream request carried {text!r}"
    first = sent[-1].json["messages"][0]
    return str(first["content"]) if first["role"] == "system" else ""


@pytest.mark.parametrize("degrade", [True, False], ids=["degrade", "refuse"])
def test_chroma_server_down_and_back(make_rapport, scripted_upstream, chroma, degrade):
    rapport = make_rapport(
        memory={"store": "server", "chroma": {"host": "127.0.0.1", "port": chroma.port}, "summaries": False},
        degrade_on_store_failure=degrade,
    )
    with httpx.Client(timeout=60) as client:
        admin = {"authorization": f"Bearer {rapport.admin_key}"}
        added = client.post(
            f"{rapport.url}/admin/users/carol/memories", params={"tenant": "tenant-a"}, headers=admin,
            json={"text": "carol is allergic to peanuts"},
        )  # fmt: skip
        assert added.status_code == 201, added.text
        healthy = chat(rapport, "what should I cook?")
        assert healthy.status_code == 200
        assert "x-rapport-degraded" not in healthy.headers
        assert "peanuts" in system_prompt(scripted_upstream, "what should I cook?")
        assert client.get(f"{rapport.url}/readyz").status_code == 200

        chroma.kill()
        down = chat(rapport, "and for dessert?")
        if degrade:
            assert down.status_code == 200, down.text
            assert "memory" in down.headers["x-rapport-degraded"]
            assert down.json()["rapport"]["degraded"], down.json()["rapport"]
            # Served without personalization: no memory block reached the upstream.
            assert "peanuts" not in system_prompt(scripted_upstream, "and for dessert?")
        else:
            assert down.status_code == 503, down.text
            assert set(down.json()["error"]) == {"message", "type", "param", "code"}
            assert not _sent_for(scripted_upstream, "and for dessert?"), "refused requests must not reach the upstream"
        ready = client.get(f"{rapport.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["plugin:memory"]["ok"] is False

        chroma.start()
        wait_for(lambda: client.get(f"{rapport.url}/readyz").status_code == 200, 30, "readiness after restart")
        back = chat(rapport, "and a snack?")
        assert back.status_code == 200
        assert "x-rapport-degraded" not in back.headers
        assert "peanuts" in system_prompt(scripted_upstream, "and a snack?"), "the stored memory survived the outage"


def test_rapport_starts_degraded_while_chroma_server_is_down(make_rapport, scripted_upstream, tmp_path):
    """The store being down at start is the same fault as it going down later: serve, say so, recover."""
    server = ChromaServer(tmp_path / "late-chroma", free_port())
    rapport = make_rapport(
        memory={"store": "server", "chroma": {"host": "127.0.0.1", "port": server.port}, "summaries": False},
        degrade_on_store_failure=True,
    )
    with httpx.Client(timeout=60) as client:
        down = chat(rapport, "hello?")
        assert down.status_code == 200, down.text
        assert "memory" in down.headers["x-rapport-degraded"]
        assert client.get(f"{rapport.url}/readyz").status_code == 503
        server.start()
        try:
            wait_for(lambda: client.get(f"{rapport.url}/readyz").status_code == 200, 30, "readiness once Chroma is up")
            up = chat(rapport, "hello again")
            assert up.status_code == 200
            assert "x-rapport-degraded" not in up.headers
        finally:
            server.kill()
