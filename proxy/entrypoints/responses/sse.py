"""What both ways of answering a Responses stream share: the typed SSE framing, and opening the stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.entrypoints.common import aclose_quietly
from proxy.ratelimit import RateLimiter, StreamSlot

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def typed_sse(event: dict[str, Any]) -> bytes:
    """One Responses stream event: its `type` on the `event:` line, as OpenAI sends it."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def open_stream(
    limiter: RateLimiter, key_id: str, events: AsyncIterator[dict[str, Any]]
) -> tuple[dict[str, Any] | None, StreamSlot]:
    """Take a stream slot and the upstream's first event before answering: an upstream that fails at once
    gets the client a real status, not a 200 and an error event. On failure the slot and stream are closed."""
    slot = await limiter.open_stream(key_id)
    try:
        first: dict[str, Any] | None = await events.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await limiter.close_stream(slot)
        await aclose_quietly(events)
        raise
    return first, slot


async def chain(first: dict[str, Any] | None, rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    if first is not None:
        yield first
    async for event in rest:
        yield event
