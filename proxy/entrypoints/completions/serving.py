"""/v1/completions and /v1/embeddings: authenticated, capped pass-through to the configured upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from proxy.auth.deps import Principal
from proxy.entrypoints.admission import admit
from proxy.entrypoints.common import sse_data, stream_error_event
from proxy.entrypoints.completions.protocol import CompletionRequest
from proxy.entrypoints.completions.report import completions_report
from proxy.services import Services


async def pass_through(
    services: Services, request: Request, principal: Principal, path: str, schema: type[BaseModel]
) -> Response:
    admitted = await admit(services, request, principal, schema)
    body, model = admitted.body, admitted.model
    report = None
    if isinstance(admitted.request, CompletionRequest):
        report = completions_report(services, model, admitted.user, admitted.request.rapport)
    extension = report.extension if report is not None else None
    headers = report.headers if report is not None else None
    if body.get("stream"):
        events = services.upstream.stream(model, path, body)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        return StreamingResponse(_relay(first, events, extension), media_type="text/event-stream", headers=headers)
    result = await services.upstream.request(model, path, body)
    if extension is not None and isinstance(result, dict):
        result["rapport"] = extension
    return Response(content=orjson.dumps(result), media_type="application/json", headers=headers)


async def _relay(
    first: dict[str, Any] | None, events: AsyncIterator[dict[str, Any]], extension: dict[str, Any] | None
) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            # Like chat, the first chunk carries the `rapport` extension.
            yield sse_data(first if extension is None else {**first, "rapport": extension})
            async for event in events:
                yield sse_data(event)
    except Exception as exc:
        yield stream_error_event(exc)
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    yield b"data: [DONE]\n\n"
