"""A scripted OpenAI-compatible upstream on a real socket.

It records every request it receives and answers from a script, so tests can show what a real model
cannot: a 500, a 429 then success, a hang, a stream cut mid-way, a client that goes away.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.servers import ThreadedServer


@dataclass
class Reply:
    """One scripted answer. kind: ok | error | hang | stream | cut_stream | slow_stream | odd_stream
    (odd_stream: `body` is sent as one stream event at `cut_after`, between ordinary chunks).
    `events`: a stream made of exactly these chunks, then [DONE] (several choices, finish and usage placement)."""

    kind: str = "ok"
    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    chunks: list[str] | None = None
    cut_after: int = 2
    events: list[dict[str, Any]] | None = None


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]


def completion(content: str, model: str, *, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
        message["content"] = None
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else "[parts]"
    return ""


# -- /v1/responses, for upstreams that speak Responses themselves (Rapport's pass-through) ------------------

RESPONSES_USAGE = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 6,
                   "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 17}


def output_message(text: str, item_id: str = "msg_upstream_1") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def output_call(call_id: str, name: str, arguments: str, item_id: str = "fc_upstream_1") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": "completed"}


def response_object(output: list[dict[str, Any]], model: str, *, status: str = "completed",
                    incomplete: str | None = None) -> dict[str, Any]:
    """A Responses API response as an upstream answers it, under the upstream's own ids."""
    return {"id": "resp_upstream_1", "object": "response", "created_at": int(time.time()), "status": status,
            "model": model, "output": output, "usage": RESPONSES_USAGE, "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None, "store": False}


def responses_events(text: str, model: str, pieces: list[str] | None = None) -> list[dict[str, Any]]:
    """The typed events of a streamed text answer, as OpenAI sends them (upstream ids and numbering)."""
    pieces = pieces if pieces is not None else [text[i : i + 4] for i in range(0, len(text), 4)]
    shell = {**response_object([], model, status="in_progress"), "usage": None}
    item = {**output_message("", "msg_upstream_1"), "status": "in_progress", "content": []}
    where = {"item_id": "msg_upstream_1", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": shell},
        {"type": "response.in_progress", "response": shell},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []} for piece in pieces),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": output_message(text, "msg_upstream_1")},
        {"type": "response.completed", "response": response_object([output_message(text, "msg_upstream_1")], model)},
    ]
    return [{**event, "sequence_number": i} for i, event in enumerate(events)]


def _last_user_input(body: dict[str, Any]) -> str:
    value = body.get("input")
    if isinstance(value, str):
        return value
    for item in reversed(value if isinstance(value, list) else []):
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "input_text")
    return ""


class ScriptedUpstream:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.cancelled = threading.Event()
        self.release = asyncio.Event()  # never set by default: a hang lasts until the client gives up
        self._server = ThreadedServer(
            Starlette(
                routes=[
                    Route("/v1/chat/completions", self._chat, methods=["POST"]),
                    Route("/v1/completions", self._completions, methods=["POST"]),
                    Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                    Route("/v1/models", self._models, methods=["GET"]),
                    Route("/v1/responses", self._responses, methods=["POST"]),
                ]
            )
        )
        self.base_url = f"{self._server.url}/v1"

    def start(self) -> ScriptedUpstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self.requests.clear()
        self.cancelled.clear()

    def _next(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Reply()

    async def _record(self, request: Request) -> dict[str, Any]:
        body = orjson.loads(await request.body())
        with self._lock:
            self.requests.append(Received(request.url.path, dict(request.headers), body))
        return body

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    async def _embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, float(len(str(x)))]} for i, x in enumerate(inputs)]
        return JSONResponse({"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def _completions(self, request: Request) -> Response:
        body = await self._record(request)
        reply = self._next()
        if reply.kind == "error":
            return JSONResponse(reply.body or {"error": {"message": "scripted failure"}}, status_code=reply.status, headers=reply.headers)
        text = reply.content if reply.content is not None else f"completed: {body.get('prompt')}"
        if body.get("stream"):
            # A healthy upstream streams legacy completions too (text_completion chunks, then [DONE]).
            return StreamingResponse(self._stream_text(text, body.get("model")), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "cmpl-scripted",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    async def _stream_text(self, text: str, model: Any) -> Any:
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)] or [""]
        for i, piece in enumerate(pieces):
            finish = "stop" if i == len(pieces) - 1 else None
            event = {
                "id": "cmpl-scripted",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": piece, "finish_reason": finish, "logprobs": None}],
            }
            yield b"data: " + orjson.dumps(event) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        reply = self._next()
        model = str(body.get("model"))
        if reply.kind == "error":
            return JSONResponse(
                reply.body or {"error": {"message": f"scripted HTTP {reply.status}", "type": "server_error"}},
                status_code=reply.status,
                headers=reply.headers,
            )
        if reply.kind == "hang":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return JSONResponse(completion("released", model))
        content = reply.content if reply.content is not None else f"echo: {_last_user_text(body)}"
        if body.get("stream") or reply.kind in ("stream", "cut_stream", "slow_stream", "odd_stream"):
            return StreamingResponse(self._stream(body, reply, content, model), media_type="text/event-stream")
        if reply.body is not None:
            return JSONResponse(reply.body)
        return JSONResponse(completion(content, model))

    async def _stream(self, body: dict[str, Any], reply: Reply, content: str, model: str) -> Any:
        pieces = reply.chunks or [content[i : i + 4] for i in range(0, len(content), 4)] or [""]
        if reply.events is not None:
            for event in reply.events:
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        try:
            yield b"data: " + orjson.dumps(chunk(model, {"role": "assistant", "content": ""})) + b"\n\n"
            for i, piece in enumerate(pieces):
                if reply.kind == "cut_stream" and i == reply.cut_after:
                    # Drop the connection without [DONE], as a crashed upstream would.
                    raise ConnectionResetError("scripted cut")
                if reply.kind == "slow_stream" and i == reply.cut_after:
                    await self.release.wait()
                if reply.kind == "odd_stream" and i == reply.cut_after:
                    yield b"data: " + orjson.dumps(reply.body) + b"\n\n"
                yield b"data: " + orjson.dumps(chunk(model, {"content": piece})) + b"\n\n"
            final = chunk(model, {}, "stop")
            yield b"data: " + orjson.dumps(final) + b"\n\n"
            options = body.get("stream_options")
            # Fuzzed requests may carry any JSON here; a healthy upstream must not crash on it mid-stream.
            if isinstance(options, dict) and options.get("include_usage"):
                usage = {**chunk(model, {}), "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": len(pieces), "total_tokens": 10 + len(pieces)}}
                yield b"data: " + orjson.dumps(usage) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def _responses(self, request: Request) -> Response:
        """/v1/responses: the same script (error, ok with `body`, stream with `events`, cut_stream after
        `cut_after` events); by default an echo of the last user input, streamed when asked. Typed events
        with their `event:` line and no [DONE], as OpenAI streams them."""
        body = await self._record(request)
        reply = self._next()
        model = str(body.get("model"))
        if reply.kind == "error":
            return JSONResponse(
                reply.body or {"error": {"message": f"scripted HTTP {reply.status}", "type": "server_error"}},
                status_code=reply.status,
                headers=reply.headers,
            )
        content = reply.content if reply.content is not None else f"echo: {_last_user_input(body)}"
        if body.get("stream") or reply.kind in ("stream", "cut_stream"):
            events = reply.events if reply.events is not None else responses_events(content, model, reply.chunks)
            return StreamingResponse(self._typed_stream(events, reply), media_type="text/event-stream")
        return JSONResponse(reply.body if reply.body is not None else response_object([output_message(content)], model))

    async def _typed_stream(self, events: list[dict[str, Any]], reply: Reply) -> Any:
        try:
            for i, event in enumerate(events):
                if reply.kind == "cut_stream" and i == reply.cut_after:
                    raise ConnectionResetError("scripted cut")
                yield b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
