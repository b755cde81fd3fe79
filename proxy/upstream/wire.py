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


def _sse_data(line: bytes | str) -> Any:
    """The decoded `data:` of one SSE line: DONE at `[DONE]`, None for lines that carry no data."""
    if isinstance(line, str):
        line = line.encode()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return DONE
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamFailure("upstream sent a malformed stream event", status=502) from exc


def sse_event(line: bytes | str) -> Any:
    """One SSE line -> the event dict, DONE at `[DONE]`, None for lines that carry no data."""
    event = _sse_data(line)
    if event is None or event is DONE:
        return event
    if isinstance(event, dict) and "error" in event and "choices" not in event:
        raise UpstreamFailure(error_message(502, event), status=502, body=event)
    choices = event.get("choices", []) if isinstance(event, dict) else None
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        raise UpstreamFailure("upstream sent a malformed stream event", status=502)
    return event


# -- /v1/responses (pass-through) ---------------------------------------------------------------------------

RESPONSES_PATH = "responses"
# A Responses stream is complete after one of these; OpenAI sends no [DONE] after it (some servers do).
RESPONSES_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


def responses_event(event: Any) -> dict[str, Any]:
    """A Responses stream event, checked: an upstream's `error` or `response.failed` event is a failure."""
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise UpstreamFailure("upstream sent a malformed stream event", status=502)
    kind = event["type"]
    if kind == "error":
        # OpenAI puts code and message on the event itself; other servers nest them under `error`.
        detail = event.get("error") if isinstance(event.get("error"), dict) else event
        raise UpstreamFailure(error_message(502, {"error": detail}), status=502, body=event)
    if kind == "response.failed":
        response = event.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        if not isinstance(error, dict):
            error = {"message": "upstream response failed"}
        raise UpstreamFailure(error_message(502, {"error": error}), status=502, body=event)
    return event


def responses_sse_event(line: bytes | str) -> Any:
    """One SSE line of a Responses stream -> the event dict, DONE at `[DONE]`, None for other lines
    (the `event:` line repeats the data's `type`)."""
    event = _sse_data(line)
    if event is None or event is DONE:
        return event
    return responses_event(event)


class StreamReader:
    """Reads one upstream SSE stream line by line and knows when it is complete: chat and completions end
    at `[DONE]`, a Responses stream at its final event (or `[DONE]`, where a server sends one)."""

    def __init__(self, path: str) -> None:
        self._responses = path == RESPONSES_PATH
        self.finished = False

    def read(self, line: bytes | str) -> dict[str, Any] | None:
        """The event on this line, or None (no data, or the end marker: then `finished` is set)."""
        event = responses_sse_event(line) if self._responses else sse_event(line)
        if event is DONE:
            self.finished = True
            return None
        if event is not None and self._responses and event["type"] in RESPONSES_FINAL_EVENTS:
            # Set before the caller yields it: a consumer that stops at the final event still left a
            # complete stream, whose connection can go back to the pool.
            self.finished = True
        return event  # type: ignore[no-any-return]

    def incomplete(self) -> UpstreamFailure:
        end = "its final event" if self._responses else "[DONE]"
        return UpstreamFailure(f"upstream stream ended before {end}", status=502)
