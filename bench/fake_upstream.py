"""A fast fake OpenAI-compatible upstream for the overhead benchmark, run as its own process.

Raw asyncio (uvloop when installed) HTTP/1.1 with keep-alive: no framework, so the upstream's own cost is as
small and as constant as possible and every contender in `bench/overhead.py` pays the same for it.

    python bench/fake_upstream.py --port 0      # prints "READY <port>" once it listens

Serves `POST /v1/chat/completions` (JSON, or SSE when the body has `"stream": true`, with
`stream_options.include_usage` honoured and a final `[DONE]`), `POST /v1/responses` (a Response object,
or its typed events ending at `response.completed` with no `[DONE]`, as OpenAI streams them), `GET /v1/models`
and `GET /health`.
`GET /stats` answers how many requests each path got (`{"hits": {path: count}}`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

CONTENT = "Hello! This is a fixed answer from the benchmark's fake upstream."
PIECES = [CONTENT[i : i + 8] for i in range(0, len(CONTENT), 8)]
KEEP_ALIVE = b"connection: keep-alive\r\n"
# Requests served per path, read with GET /stats: lets a bench check which upstream route a proxy used
# (for example that a pass-through model reached /v1/responses rather than being bridged to chat).
HITS: dict[str, int] = {}


def _completion(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": CONTENT}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": len(PIECES),
                "total_tokens": 12 + len(PIECES),
            },
        }
    )


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _events(model: str, include_usage: bool) -> list[bytes]:
    events = [_chunk(model, {"role": "assistant", "content": ""})]
    events += [_chunk(model, {"content": piece}) for piece in PIECES]
    events.append(_chunk(model, {}, "stop"))
    if include_usage:
        usage = {"prompt_tokens": 12, "completion_tokens": len(PIECES), "total_tokens": 12 + len(PIECES)}
        events.append({**_chunk(model, {}), "choices": [], "usage": usage})
    out = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
    out.append(b"data: [DONE]\n\n")
    return out


def _response_object(model: str, status: str = "completed") -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [_output_message(CONTENT)] if done else [],
        "usage": {
            "input_tokens": 12,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(PIECES),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12 + len(PIECES),
        }
        if done
        else None,
        "error": None,
        "incomplete_details": None,
        "store": False,
    }


def _output_message(text: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant", "content": [part]}


def _responses_events(model: str) -> list[bytes]:
    where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    shell = _response_object(model, "in_progress")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": shell},
        {"type": "response.in_progress", "response": shell},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**_output_message(""), "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **where, "part": empty},
        *({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []} for piece in PIECES),
        {"type": "response.output_text.done", **where, "text": CONTENT, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**empty, "text": CONTENT}},
        {"type": "response.output_item.done", "output_index": 0, "item": _output_message(CONTENT)},
        {"type": "response.completed", "response": _response_object(model)},
    ]  # fmt: skip
    return [
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps({**e, "sequence_number": i}) + b"\n\n"
        for i, e in enumerate(events)
    ]


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + KEEP_ALIVE
        + b"\r\n"
        + body
    )


class FakeUpstream(asyncio.Protocol):
    def __init__(self, chunk_delay: float) -> None:
        self.chunk_delay = chunk_delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a stream is being written: later pipelined requests wait for it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self._handle(method, path.split("?", 1)[0], body)

    def _handle(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        HITS[path] = HITS.get(path, 0) + 1
        if method == "GET" and path == "/stats":
            self.transport.write(_response("200 OK", orjson.dumps({"hits": HITS})))
            return
        if method == "POST" and path.endswith("/responses"):
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.transport.write(_response("400 Bad Request", b'{"error":{"message":"bad json"}}'))
                return
            model = str(request.get("model") or "fake")
            if request.get("stream"):
                self.busy = True
                asyncio.get_running_loop().create_task(self._stream(_responses_events(model)))
            else:
                self.transport.write(_response("200 OK", orjson.dumps(_response_object(model))))
        elif method == "POST" and path.endswith("/chat/completions"):
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.transport.write(_response("400 Bad Request", b'{"error":{"message":"bad json"}}'))
                return
            model = str(request.get("model") or "fake")
            if request.get("stream"):
                include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
                self.busy = True
                asyncio.get_running_loop().create_task(self._stream(_events(model, include_usage)))
            else:
                self.transport.write(_response("200 OK", _completion(model)))
        elif method == "GET" and path.endswith("/models"):
            self.transport.write(
                _response("200 OK", b'{"object":"list","data":[{"id":"fake","object":"model"}]}')
            )
        elif method == "GET" and path == "/health":
            self.transport.write(_response("200 OK", b'{"status":"ok"}'))
        else:
            self.transport.write(_response("404 Not Found", b'{"error":{"message":"not found"}}'))

    async def _stream(self, events: list[bytes]) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n" + KEEP_ALIVE + b"\r\n"
        )
        # One write per event with a yield in between, as a real token stream arrives (not one coalesced blob).
        for event in events:
            if self.transport is None:
                return
            transport.write(_chunked(event))
            await asyncio.sleep(self.chunk_delay)
        transport.write(b"0\r\n\r\n")
        self.busy = False
        if self.buffer:
            self._drain()


async def serve(host: str, port: int, chunk_delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeUpstream(chunk_delay), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between stream events")
    args = parser.parse_args()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(args.host, args.port, args.chunk_delay_ms / 1000.0))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
