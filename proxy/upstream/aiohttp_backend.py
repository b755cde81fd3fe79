"""Direct calls to OpenAI-compatible bases over aiohttp: the default fast path.

bench/overhead.py measured the transport as most of the gateway's own cost: aiohttp's C HTTP parser costs
about a fifth of httpx's per call, which is what brings the added p50 under 2 ms.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from proxy.settings import ModelEntry
from proxy.upstream import wire
from proxy.upstream.base import UpstreamFailure


class AiohttpBackend:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: a ClientSession belongs to the event loop it was made in.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=2048, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(), auto_decompress=True
            )
        return self._session

    @staticmethod
    def _timeout(entry: ModelEntry, stream: bool) -> aiohttp.ClientTimeout:
        t = entry.litellm_params.timeout
        if stream:
            # A stream may last long; what must not happen is a silence longer than the timeout.
            return aiohttp.ClientTimeout(total=None, connect=min(t, 10.0), sock_read=t)
        return aiohttp.ClientTimeout(total=t, connect=min(t, 10.0))

    async def request(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url, headers, content = wire.prepare(entry, path, body)
        try:
            async with self._client().post(url, data=content, headers=headers, timeout=self._timeout(entry, False)) as resp:
                raw = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        if status >= 400:
            raise wire.http_failure(status, raw, resp_headers)
        return wire.json_result(raw)

    async def stream(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        url, headers, content = wire.prepare(entry, path, body)
        try:
            resp = await self._client().post(url, data=content, headers=headers, timeout=self._timeout(entry, True))
        except TimeoutError as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        reader = wire.StreamReader(path)
        try:
            if resp.status >= 400:
                raise wire.http_failure(resp.status, await resp.read(), resp.headers)
            try:
                async for line in resp.content:
                    if reader.finished:
                        continue  # after the end: read to the end so the connection goes back to the pool
                    event = reader.read(line)
                    if event is not None:
                        yield event
            except TimeoutError as exc:
                raise UpstreamFailure("upstream stream stalled (read timeout)", timeout=True) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamFailure(f"upstream stream broke: {exc.__class__.__name__}") from exc
            if not reader.finished:
                raise reader.incomplete()
        finally:
            if reader.finished:
                resp.release()
            else:
                # Unfinished (error, client gone): drop the connection, which is how the upstream learns of it.
                resp.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
