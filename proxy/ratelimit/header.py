"""x-rapport-degraded for limits: a request limited per replica because the shared limiter was down says so.

The limiter is called deep inside a route (admission, a stream's opening), far from the response it should mark.
This middleware gives each request a list of notes in a context variable; the limiter adds to it; the note joins
x-rapport-degraded (after the stages' own notes) when the response starts, whatever route or error answered.
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEGRADED = "limits: per replica (shared limiter unavailable)"
HEADER = b"x-rapport-degraded"
# The same cap the pipeline puts on the header.
_MAX_HEADER = 512

_notes: ContextVar[list[str] | None] = ContextVar("rapport_limit_notes", default=None)


def note_degraded(note: str) -> None:
    """Mark the response of the request being served (no-op outside a request)."""
    notes = _notes.get()
    if notes is not None and note not in notes:
        notes.append(note)


class DegradedLimitsHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A list, not a value: tasks that copy the context (stream bodies) still add to this request's notes.
        notes: list[str] = []
        token = _notes.set(notes)

        async def marking_send(message: Message) -> None:
            if message["type"] == "http.response.start" and notes:
                message = _with_notes(message, notes)
            await send(message)

        try:
            await self.app(scope, receive, marking_send)
        finally:
            _notes.reset(token)


def _with_notes(message: Message, notes: list[str]) -> Message:
    headers = list(message.get("headers", []))
    existing = [value.decode("latin-1") for name, value in headers if name.lower() == HEADER]
    parts = [p for value in existing for p in value.split("; ") if p]
    parts += [n for n in notes if n not in parts]
    headers = [(name, value) for name, value in headers if name.lower() != HEADER]
    headers.append((HEADER, "; ".join(parts)[:_MAX_HEADER].encode("latin-1")))
    return {**message, "headers": headers}
