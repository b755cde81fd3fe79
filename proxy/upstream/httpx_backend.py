"""Direct calls to OpenAI-compatible bases with one pooled httpx client (the portable fast path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from proxy.settings import ModelEntry
from proxy.upstream import wire
from proxy.upstream.base import UpstreamFailure

_DRAIN_TIMEOUT_S = 1.0


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read the rest of a finished stream (normally just the end of the chunked body): only a fully read
    response goes back to the pool; closing it unread costs the next stream a new TCP connection."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            async for _ in lines:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # the answer is complete either way; the connection just is not reused


class HttpxBackend:
    def __init__(self) -> None:
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=2048, max_keepalive_connections=512, keepalive_expiry=30),
            http2=False,
        )

    def _timeout(self, entry: ModelEntry) -> httpx.Timeout:
        t = entry.litellm_params.timeout
        return httpx.Timeout(t, connect=min(t, 10.0))

    async def request(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url, headers, content = wire.prepare(entry, path, body)
        try:
            response = await self._client.post(url, headers=headers, content=content, timeout=self._timeout(entry))
        except httpx.TimeoutException as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except httpx.TransportError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        if response.status_code >= 400:
            raise wire.http_failure(response.status_code, response.content, response.headers)
        return wire.json_result(response.content)

    async def stream(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        url, headers, content = wire.prepare(entry, path, body)
        request = self._client.build_request("POST", url, headers=headers, content=content, timeout=self._timeout(entry))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except httpx.TransportError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        try:
            if response.status_code >= 400:
                raise wire.http_failure(response.status_code, await response.aread(), response.headers)
            reader = wire.StreamReader(path)
            lines = response.aiter_lines()
            try:
                async for line in lines:
                    event = reader.read(line)
                    if event is not None:
                        yield event
                    if reader.finished:
                        break
            except httpx.TimeoutException as exc:
                raise UpstreamFailure("upstream stream stalled (read timeout)", timeout=True) from exc
            except httpx.TransportError as exc:
                raise UpstreamFailure(f"upstream stream broke: {exc.__class__.__name__}") from exc
            if not reader.finished:
                raise reader.incomplete()
            await _drain(lines)
        finally:
            # Closing the response closes the connection, which is how the upstream learns of a cancel.
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()
