"""/v1/completions and /v1/embeddings: authenticated, capped pass-through to the configured upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from proxy.auth.deps import Principal
from proxy.entrypoints.common import check_caps, read_json_object, sse_data, stream_error_event, validate
from proxy.errors import InvalidRequest
from proxy.identity import resolve_user
from proxy.services import Services


async def pass_through(
    services: Services, request: Request, principal: Principal, path: str, schema: type[BaseModel]
) -> Response:
    services.limiter.check(principal.key_id, principal.rate_limit_rps)
    body = await read_json_object(request)
    req = validate(schema, body)
    check_caps(services.settings.limits, req)
    model = getattr(req, "model", None) or services.settings.default_model
    if not model:
        raise InvalidRequest("'model' is required.", param="model")
    services.upstream.entry(model)
    body["model"] = model
    user = resolve_user(request.headers, body, principal)
    if user is not None and "user" not in body:
        body["user"] = user
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
