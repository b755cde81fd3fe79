"""Run ASGI apps on real sockets in background threads, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """uvicorn in its own thread and event loop, on a socket bound before start (no port races)."""

    def __init__(self, app: Any, *, log_level: str = "warning", **config: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5, **config)
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 60.0) -> ThreadedServer:
        self._thread.start()
        started = threading.Event()

        def _watch() -> None:
            while not self._server.started and self._thread.is_alive():
                threading.Event().wait(0.01)
            started.set()

        threading.Thread(target=_watch, daemon=True).start()
        if not started.wait(timeout) or not self._server.started:
            raise RuntimeError("server did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()
