"""/v1/responses passed through to an upstream that speaks Responses (`responses: passthrough` on its
model_list entry).

Everything around the upstream call is the bridge's (ResponsesServing.create): admission with the bound
key's user pinned, refusals by field, caps, `previous_response_id` expanded from Rapport's own store, the
stages' `before`, the stored response and the stages' `after`. What differs is the call: the stages'
blocks go into the upstream's `instructions`, the upstream stores nothing (`store: false`), and its answer
or typed events come back with Rapport's ids and the stages' rewriting of the text (RPM's reasoning out).
Upstream failures map like chat's: through the router's one mapping point.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse

from proxy.auth.deps import Principal
from proxy.entrypoints.common import aclose_quietly, stream_error_event
from proxy.entrypoints.responses.passthrough_stream import PassthroughStream
from proxy.entrypoints.responses.passthrough_wire import (
    ItemIds,
    answer_text,
    chat_usage,
    finish_reason,
    rewrite_item,
    upstream_body,
    usage_of,
)
from proxy.entrypoints.responses.protocol import ResponsesRequest
from proxy.entrypoints.responses.sse import SSE_HEADERS, chain, open_stream, typed_sse
from proxy.pipeline.context import RequestContext
from proxy.pipeline.runner import Pipeline
from proxy.pipeline.stage import Stage
from proxy.ratelimit import StreamSlot
from proxy.services import Services
from proxy.upstream.base import UpstreamFailure
from proxy.upstream.router import to_client_error

# The response object for (output, chat finish_reason, Responses usage): the serving's turn builds it.
BuildResponse = Callable[[list[dict[str, Any]], str | None, dict[str, Any] | None], dict[str, Any]]
# Store and record one answer: (response, text shown, finish_reason, chat-shaped usage).
FinishTurn = Callable[[dict[str, Any], str, str | None, dict[str, Any]], Awaitable[None]]
VAS_REASON = "not applied: this model's /v1/responses is passed through to an upstream that decodes it itself"


class Passthrough:
    def __init__(self, services: Services, pipeline: Pipeline) -> None:
        self.services = services
        self.pipeline = pipeline

    async def answer(
        self,
        ctx: RequestContext,
        ran: list[Stage],
        req: ResponsesRequest,
        principal: Principal,
        build: BuildResponse,
        finish: FinishTurn,
    ) -> Response:
        """Answer a request whose `ctx.body` the stages have run on (chat-shaped, as on the bridge)."""
        for report in ctx.reports:
            if report.name == "vas" and report.detail.get("applied") is False:
                report.detail["reason"] = VAS_REASON
        body = upstream_body(req, ctx.model, ctx.body["messages"], ctx.body.get("user"), ctx.stream)
        if ctx.stream:
            return await self._stream(ctx, ran, body, principal, build, finish)
        return await self._complete(ctx, ran, body, build, finish)

    def _finalize(self, ctx: RequestContext, ran: list[Stage]) -> Callable[[str], str]:
        return lambda text: self.pipeline.finalize_text(ctx, ran, text)

    async def _complete(
        self, ctx: RequestContext, ran: list[Stage], body: dict[str, Any], build: BuildResponse, finish: FinishTurn
    ) -> Response:
        result = await self.services.upstream.responses(ctx.model, body)
        output = result.get("output")
        if result.get("status") == "failed" or not isinstance(output, list):
            error = result.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            failure = UpstreamFailure(str(message or "upstream response failed"), status=502, body=result)
            raise to_client_error(failure, ctx.model)
        finalize = self._finalize(ctx, ran)
        ids = ItemIds()
        items = [rewrite_item(item, ids, lambda _id, _i, text: finalize(text)) for item in output if isinstance(item, dict)]
        reason = finish_reason(items, result.get("status"), result.get("incomplete_details"))
        usage = usage_of(result.get("usage"))
        response = build(items, reason, usage)
        await finish(response, answer_text(items), reason, chat_usage(usage))
        return Response(content=orjson.dumps(response), media_type="application/json", headers=self.pipeline.headers(ctx))

    async def _stream(
        self,
        ctx: RequestContext,
        ran: list[Stage],
        body: dict[str, Any],
        principal: Principal,
        build: BuildResponse,
        finish: FinishTurn,
    ) -> Response:
        events = self.services.upstream.responses_stream(ctx.model, body)
        first, slot = await open_stream(self.services.limiter, principal.key_id, events)
        stream = PassthroughStream(
            base=build([], None, None),
            make_chain=lambda: self.pipeline.stream_filters(ctx, ran),
            finalize=self._finalize(ctx, ran),
        )
        if ctx.user is not None:
            stream.base["rapport"] = self.pipeline.extension(ctx)
        return StreamingResponse(
            self._relay(stream, first, events, slot, build, finish),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **self.pipeline.headers(ctx)},
        )

    async def _relay(
        self,
        stream: PassthroughStream,
        first: dict[str, Any] | None,
        events: AsyncIterator[dict[str, Any]],
        slot: StreamSlot,
        build: BuildResponse,
        finish: FinishTurn,
    ) -> AsyncIterator[bytes]:
        try:
            for event in stream.start():
                yield typed_sse(event)
            async for upstream_event in chain(first, events):
                for event in stream.translate(upstream_event):
                    yield typed_sse(event)
            output = stream.output()
            status, incomplete = stream.status()
            reason = finish_reason(output, status, incomplete)
            usage = stream.usage()
            response = build(output, reason, usage)
            # Stored and recorded before the last event, so a client that continues at once finds it.
            await finish(response, answer_text(output), reason, chat_usage(usage))
            kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
            yield typed_sse(stream.event(kind, response=response))
        except Exception as exc:
            # Mid-stream failure (the upstream broke off, or sent an error event): an error event the SDKs
            # raise on, then the end. Nothing is stored or recorded for a broken answer.
            yield stream_error_event(exc)
        finally:
            await self.services.limiter.close_stream(slot)
            await aclose_quietly(events)
