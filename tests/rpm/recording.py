"""A recording pass-through in front of a real upstream: forwards every request and keeps its JSON body,
so an end-to-end test can see exactly what Rapport sent to the real model."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.servers import ThreadedServer


class RecordingProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadedServer(Starlette(routes=[Route("/v1/{path:path}", self._forward, methods=["GET", "POST"])]))
        self.base_url = f"{self._server.url}/v1"

    def start(self) -> RecordingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    async def _forward(self, request: Request) -> Response:
        raw = await request.body()
        if raw:
            with self._lock:
                self.bodies.append(orjson.loads(raw))
        async with httpx.AsyncClient(timeout=300) as client:
            upstream = await client.request(
                request.method, f"{self.target}/{request.path_params['path']}", content=raw,
                headers={"content-type": request.headers.get("content-type", "application/json")},
            )
        return Response(upstream.content, status_code=upstream.status_code, media_type=upstream.headers.get("content-type"))

    def chat_bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [b for b in self.bodies if "messages" in b]
