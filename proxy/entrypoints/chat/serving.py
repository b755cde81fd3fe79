"""The logic of /v1/chat/completions: validate, personalize, call the upstream, answer, learn."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from proxy.auth.deps import Principal
from proxy.entrypoints.admission import admit
from proxy.entrypoints.chat.choice_filters import ChoiceFilters
from proxy.entrypoints.chat.protocol import ChatCompletionRequest
from proxy.entrypoints.chat.shown_logprobs import trim_message_logprobs
from proxy.entrypoints.common import aclose_quietly, sse_data, stream_error_event
from proxy.pipeline.context import Exchange, RapportOptions, RequestContext
from proxy.pipeline.runner import Pipeline
from proxy.ratelimit import StreamSlot
from proxy.services import Services
from proxy.upstream.router import BoundUpstream

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _answer_text(response: dict[str, Any]) -> tuple[str, str | None]:
    choices = response.get("choices") or []
    if not choices:
        return "", None
    first = choices[0]
    message = first.get("message") or {}
    content = message.get("content")
    return (content if isinstance(content, str) else ""), first.get("finish_reason")


log = logging.getLogger("rapport.chat")


class ChatServing:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.pipeline = Pipeline(services)

    async def create(self, request: Request, principal: Principal) -> Response:
        admitted = await admit(self.services, request, principal, ChatCompletionRequest)
        body, req, model, user = admitted.body, admitted.request, admitted.model, admitted.user
        ctx = RequestContext(
            request_id="rq-" + secrets.token_hex(8),
            endpoint="chat",
            model=model,
            tenant=principal.tenant,
            user=user,
            body=body,
            options=req.rapport or RapportOptions(),
            stream=bool(req.stream),
            original_messages=list(body["messages"]),
        )
        ran = await self.pipeline.before(ctx)
        if ctx.stream:
            return await self._stream(ctx, ran, principal)
        return await self._complete(ctx, ran)

    async def _complete(self, ctx: RequestContext, ran: list[Any]) -> Response:
        generator = self.pipeline.generator(ctx, ran)
        if generator is not None:
            result = await generator.generate(ctx, BoundUpstream(self.services.upstream, ctx.model))
        else:
            result = await self.services.upstream.chat(ctx.model, ctx.body)
        self._count_tokens(ctx.model, result.get("usage"))
        # Every choice is finalized (n > 1 too), its log-probabilities with it; the exchange recorded is
        # choice 0's.
        for choice in result.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                raw = message["content"]
                message["content"] = self.pipeline.finalize_text(ctx, ran, raw)
                trim_message_logprobs(choice, raw, message["content"])
        text, finish = _answer_text(result)
        if ctx.user is not None:
            result["rapport"] = self.pipeline.extension(ctx)
        exchange = Exchange(ctx.original_messages, text, ctx.model, finish, result.get("usage") or {}, _id_of(result))
        self.pipeline.after(ctx, ran, exchange)
        return Response(
            content=orjson.dumps(result), media_type="application/json", headers=self.pipeline.headers(ctx)
        )

    async def _stream(self, ctx: RequestContext, ran: list[Any], principal: Principal) -> Response:
        generator = self.pipeline.generator(ctx, ran)
        if generator is not None:
            events = generator.generate_stream(ctx, BoundUpstream(self.services.upstream, ctx.model))
        else:
            events = self.services.upstream.chat_stream(ctx.model, ctx.body)
        limiter = self.services.limiter
        slot = await limiter.open_stream(principal.key_id)
        try:
            # Pull the first event before answering, so that an upstream that fails at once gets a real
            # HTTP status (502/504/429) instead of a 200 followed by an error event.
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await limiter.close_stream(slot)
            await aclose_quietly(events)
            raise
        return StreamingResponse(
            self._relay(ctx, ran, first, events, slot),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **self.pipeline.headers(ctx)},
        )

    async def _relay(
        self,
        ctx: RequestContext,
        ran: list[Any],
        first: dict[str, Any] | None,
        events: AsyncIterator[dict[str, Any]],
        slot: StreamSlot,
    ) -> AsyncIterator[bytes]:
        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, Any] = {}
        response_id: str | None = None
        completed = False
        # One chain of the stages' filters per choice index, so that every choice (n > 1) is filtered.
        filters = (
            ChoiceFilters(lambda: self.pipeline.stream_filters(ctx, ran))
            if self.pipeline.stream_filters(ctx, ran)
            else None
        )
        extension = self.pipeline.extension(ctx) if ctx.user is not None else None

        def send(chunk: dict[str, Any]) -> bytes:
            nonlocal finish, usage, extension, response_id
            if extension is not None:  # on the first chunk that goes out
                chunk, extension = {**chunk, "rapport": extension}, None
            finish = _collect(chunk, parts) or finish
            response_id = response_id or _id_of(chunk)
            if chunk.get("usage"):
                usage = chunk["usage"]
            return sse_data(chunk)

        try:
            if first is not None:
                for chunk in filters.apply(first) if filters else [first]:
                    yield send(chunk)
                async for event in events:
                    for chunk in filters.apply(event) if filters else [event]:
                        yield send(chunk)
                for chunk in filters.tail_chunks() if filters else []:
                    yield send(chunk)
            completed = True
        except Exception as exc:
            # Mid-stream failure: end with an error event the SDKs raise on, then close. Never hang.
            yield stream_error_event(exc)
        finally:
            await self.services.limiter.close_stream(slot)
            await aclose_quietly(events)
        if completed:
            # Scheduled before [DONE], so that the recording counts as in flight by the time the client can
            # send its next message (which then waits for it: proxy/pipeline/recordings.py).
            try:
                self._count_tokens(ctx.model, usage)
                exchange = Exchange(ctx.original_messages, "".join(parts), ctx.model, finish, usage, response_id)
                self.pipeline.after(ctx, ran, exchange)
            except Exception:
                # The answer is already out: a failure to schedule learning from it must not cut the stream.
                log.exception("recording a streamed exchange failed (request %s)", ctx.request_id)
        yield b"data: [DONE]\n\n"

    def _count_tokens(self, model: str, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            value = usage.get(kind)
            if isinstance(value, int) and value > 0:
                self.services.metrics.tokens.labels(model, kind.removesuffix("_tokens")).inc(value)


def _id_of(event: dict[str, Any]) -> str | None:
    """The response id the client sees (the upstream's `chatcmpl-...`), for feedback on the answer."""
    value = event.get("id")
    return value if isinstance(value, str) and value else None


def _collect(event: dict[str, Any], parts: list[str]) -> str | None:
    """Gather choice 0's content (the exchange recorded) and return its finish reason, if this chunk has it."""
    finish = None
    for choice in event.get("choices") or []:
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str):
            parts.append(content)
        finish = choice.get("finish_reason") or finish
    return finish
