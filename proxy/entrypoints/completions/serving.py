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
from proxy.services import Services


async def pass_through(
    services: Services, request: Request, principal: Principal, path: str, schema: type[BaseModel]
) -> Response:
    admitted = await admit(services, request, principal, schema)
    body, model = admitted.body, admitted.model
    if body.get("stream"):
        events = services.upstream.stream(model, path, body)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        return StreamingResponse(_relay(first, events), media_type="text/event-stream")
    result = await services.upstream.request(model, path, body)
    return Response(content=orjson.dumps(result), media_type="application/json")


async def _relay(first: dict[str, Any] | None, events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            yield sse_data(first)
            async for event in events:
                yield sse_data(event)
    except Exception as exc:
        yield stream_error_event(exc)
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
    yield b"data: [DONE]\n\n"
