"""OpenAI wire details shared by the direct (fast path) transports: request bytes, errors, SSE events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from proxy.settings import ModelEntry
from proxy.upstream.base import UpstreamFailure, upstream_model_name

DONE = object()


def prepare(entry: ModelEntry, path: str, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and JSON bytes of one upstream call."""
    params = entry.litellm_params
    headers = {"content-type": "application/json"}
    key = params.resolved_api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    payload = dict(body)
    payload["model"] = upstream_model_name(entry)
    return f"{(params.api_base or '').rstrip('/')}/{path}", headers, orjson.dumps(payload)


def retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_message(status: int, payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message") or payload["error"])
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return f"upstream answered HTTP {status}"


def loads_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def http_failure(status: int, raw: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
    payload = loads_or_none(raw)
    return UpstreamFailure(error_message(status, payload), status=status, retry_after=retry_after(headers), body=payload)


def json_result(raw: bytes) -> dict[str, Any]:
    payload = loads_or_none(raw)
    if not isinstance(payload, dict):
        raise UpstreamFailure("upstream returned a body that is not a JSON object", status=502)
    return payload


def sse_event(line: bytes | str) -> Any:
    """One SSE line -> the event dict, DONE at `[DONE]`, None for lines that carry no data."""
    if isinstance(line, str):
        line = line.encode()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return DONE
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamFailure("upstream sent a malformed stream event", status=502) from exc
    if isinstance(event, dict) and "error" in event and "choices" not in event:
        raise UpstreamFailure(error_message(502, event), status=502, body=event)
    choices = event.get("choices", []) if isinstance(event, dict) else None
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        raise UpstreamFailure("upstream sent a malformed stream event", status=502)
    return event
