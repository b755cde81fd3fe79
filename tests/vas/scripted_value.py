"""A scripted value server on a real socket, speaking what `VLLMBackend` calls (`/health`, `/pooling`).

A trained value model cannot be told to fail on its third pass or to be slow; this one can. Its value
of a text is 1.0 where the text ends with one of the `liked` strings, else 0.0, so a test knows which
candidate steering prefers.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import ThreadedServer


@dataclass
class ValueScript:
    liked: tuple[str, ...] = ()
    fail_from_call: int | None = None  # the 1-based /pooling call from which it answers 500
    delay_s: float = 0.0  # how long each /pooling call takes (a slow value model)
    inputs: list[list[str]] = field(default_factory=list)


class ScriptedValueServer:
    def __init__(self) -> None:
        self.script = ValueScript()
        self._lock = threading.Lock()
        self._server = ThreadedServer(
            Starlette(routes=[Route("/health", self._health, methods=["GET"]),
                              Route("/pooling", self._pooling, methods=["POST"])])
        )
        self.url = self._server.url

    def start(self) -> ScriptedValueServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self, script: ValueScript | None = None) -> None:
        with self._lock:
            self.script = script or ValueScript()

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.script.inputs)

    async def _health(self, request: Request) -> Response:
        return JSONResponse({})

    async def _pooling(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        texts = [str(t) for t in body["input"]]
        with self._lock:
            script = self.script
            script.inputs.append(texts)
            call = len(script.inputs)
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if script.fail_from_call is not None and call >= script.fail_from_call:
            return JSONResponse({"error": "scripted value failure"}, status_code=500)
        data = [{"index": i, "data": [1.0 if t.endswith(script.liked) else 0.0]}
                for i, t in enumerate(texts)]
        return JSONResponse({"data": data})
