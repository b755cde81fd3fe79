"""Experimental: the fast path's backend on aiohttp instead of httpx, to measure what the transport costs.

Bench-only (used by `bench/rapport_server.py` when RAPPORT_BENCH_TRANSPORT=aiohttp): same `Backend` interface
and error mapping as `proxy.upstream.httpx_backend.HttpxBackend`, but aiohttp's C-accelerated HTTP parser and
no anyio layer. If the numbers hold, the proxy owner can adopt it in `proxy/upstream/`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from proxy.settings import ModelEntry
from proxy.upstream.base import UpstreamFailure, upstream_model_name


def _error_message(status: int, payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message") or payload["error"])
    return f"upstream answered HTTP {status}"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AiohttpBackend:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession binds to the running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=2048, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    def _prepare(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        params = entry.litellm_params
        headers = {"content-type": "application/json"}
        key = params.resolved_api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        payload = dict(body)
        payload["model"] = upstream_model_name(entry)
        return f"{(params.api_base or '').rstrip('/')}/{path}", headers, orjson.dumps(payload)

    def _timeout(self, entry: ModelEntry, stream: bool) -> aiohttp.ClientTimeout:
        t = entry.litellm_params.timeout
        if stream:
            return aiohttp.ClientTimeout(total=None, connect=min(t, 10.0), sock_read=t)
        return aiohttp.ClientTimeout(total=t, connect=min(t, 10.0))

    async def request(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url, headers, content = self._prepare(entry, path, body)
        try:
            async with self._client().post(url, data=content, headers=headers, timeout=self._timeout(entry, False)) as resp:
                raw = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        if status >= 400:
            raise UpstreamFailure(_error_message(status, payload), status=status, retry_after=_retry_after(resp_headers), body=payload)
        if not isinstance(payload, dict):
            raise UpstreamFailure("upstream returned a body that is not a JSON object", status=502)
        return payload

    async def stream(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        url, headers, content = self._prepare(entry, path, body)
        try:
            resp = await self._client().post(url, data=content, headers=headers, timeout=self._timeout(entry, True))
        except TimeoutError as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        finished = False
        try:
            if resp.status >= 400:
                raw = await resp.read()
                try:
                    payload = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    payload = None
                raise UpstreamFailure(_error_message(resp.status, payload), status=resp.status, retry_after=_retry_after(resp.headers), body=payload)
            try:
                async for raw_line in resp.content:
                    if finished or not raw_line.startswith(b"data:"):
                        continue  # after [DONE]: read the body to its end so the connection is reused
                    data = raw_line[5:].strip()
                    if data == b"[DONE]":
                        finished = True
                        continue
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError as exc:
                        raise UpstreamFailure("upstream sent a malformed stream event", status=502) from exc
                    if isinstance(event, dict) and "error" in event and "choices" not in event:
                        raise UpstreamFailure(_error_message(502, event), status=502, body=event)
                    yield event
            except TimeoutError as exc:
                raise UpstreamFailure("upstream stream stalled (read timeout)", timeout=True) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamFailure(f"upstream stream broke: {exc.__class__.__name__}") from exc
            if not finished:
                raise UpstreamFailure("upstream stream ended before [DONE]", status=502)
        finally:
            if finished:
                resp.release()
            else:
                resp.close()  # unfinished: drop the connection so the upstream sees the cancel

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
