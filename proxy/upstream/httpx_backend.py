"""Direct calls to OpenAI-compatible bases with one pooled httpx client: the low-overhead fast path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
import orjson

from proxy.settings import ModelEntry
from proxy.upstream.base import UpstreamFailure, upstream_model_name

_DRAIN_TIMEOUT_S = 1.0


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_message(status: int, payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message") or payload["error"])
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return f"upstream answered HTTP {status}"


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

    def _prepare(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        params = entry.litellm_params
        base = (params.api_base or "").rstrip("/")
        headers = {"content-type": "application/json"}
        key = params.resolved_api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        payload = dict(body)
        payload["model"] = upstream_model_name(entry)
        return f"{base}/{path}", headers, orjson.dumps(payload)

    def _timeout(self, entry: ModelEntry) -> httpx.Timeout:
        t = entry.litellm_params.timeout
        return httpx.Timeout(t, connect=min(t, 10.0))

    async def request(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url, headers, content = self._prepare(entry, path, body)
        try:
            response = await self._client.post(url, headers=headers, content=content, timeout=self._timeout(entry))
        except httpx.TimeoutException as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except httpx.TransportError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        try:
            payload = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            payload = None
        if response.status_code >= 400:
            raise UpstreamFailure(
                _error_message(response.status_code, payload),
                status=response.status_code,
                retry_after=_retry_after(response),
                body=payload,
            )
        if not isinstance(payload, dict):
            raise UpstreamFailure("upstream returned a body that is not a JSON object", status=502)
        return payload

    async def stream(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        url, headers, content = self._prepare(entry, path, body)
        request = self._client.build_request("POST", url, headers=headers, content=content, timeout=self._timeout(entry))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamFailure(f"upstream timed out after {entry.litellm_params.timeout:g}s", timeout=True) from exc
        except httpx.TransportError as exc:
            raise UpstreamFailure(f"cannot reach upstream: {exc.__class__.__name__}") from exc
        try:
            if response.status_code >= 400:
                raw = await response.aread()
                try:
                    payload = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    payload = None
                raise UpstreamFailure(
                    _error_message(response.status_code, payload),
                    status=response.status_code,
                    retry_after=_retry_after(response),
                    body=payload,
                )
            finished = False
            lines = response.aiter_lines()
            try:
                async for line in lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError as exc:
                        raise UpstreamFailure("upstream sent a malformed stream event", status=502) from exc
                    if isinstance(event, dict) and "error" in event and "choices" not in event:
                        raise UpstreamFailure(_error_message(502, event), status=502, body=event)
                    yield event
            except httpx.TimeoutException as exc:
                raise UpstreamFailure("upstream stream stalled (read timeout)", timeout=True) from exc
            except httpx.TransportError as exc:
                raise UpstreamFailure(f"upstream stream broke: {exc.__class__.__name__}") from exc
            if not finished:
                raise UpstreamFailure("upstream stream ended before [DONE]", status=502)
            await _drain(lines)
        finally:
            # Closing the response closes the connection, which is how the upstream learns of a cancel.
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()
