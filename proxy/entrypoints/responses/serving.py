"""The logic of /v1/responses: admit, continue a stored conversation, personalize, bridge to chat (or pass
through to an upstream that speaks Responses: passthrough.py), store.

Memory and RPM personalize it as they do chat: the bridged request's leading system message is the
request's `instructions`, and the stages add their blocks to it. VAS steers chat completions only and reports
`applied: false` here. Stored responses live in a `ResponseStore`, scoped by tenant and user.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from proxy.auth.deps import Principal
from proxy.entrypoints.admission import admit
from proxy.entrypoints.chat.choice_filters import ChoiceFilters
from proxy.entrypoints.common import aclose_quietly, stream_error_event
from proxy.entrypoints.responses import bridge
from proxy.entrypoints.responses.passthrough import Passthrough
from proxy.entrypoints.responses.protocol import ResponsesRequest
from proxy.entrypoints.responses.sse import SSE_HEADERS, chain, open_stream, typed_sse
from proxy.entrypoints.responses.store import ANONYMOUS, ResponseStore, StoredResponse
from proxy.errors import InvalidRequest, NotFound
from proxy.identity import resolve_user
from proxy.pipeline.context import Exchange, RapportOptions, RequestContext
from proxy.pipeline.runner import Pipeline
from proxy.pipeline.stage import Stage
from proxy.ratelimit import StreamSlot
from proxy.services import Services


class ResponsesServing:
    def __init__(self, services: Services, store: ResponseStore) -> None:
        self.services = services
        self.store = store
        self.pipeline = Pipeline(services)
        self.passthrough = Passthrough(services, self.pipeline)

    # -- create -------------------------------------------------------------------------------------

    async def create(self, request: Request, principal: Principal) -> Response:
        admitted = await admit(self.services, request, principal, ResponsesRequest)
        req, model, user = admitted.request, admitted.model, admitted.user
        refused = req.refusals()
        if refused is not None:
            raise InvalidRequest(f"'{refused[0]}': {refused[1]}.", param=refused[0], code="unsupported_parameter")
        owner = user or ANONYMOUS
        earlier: list[dict[str, Any]] = []
        if req.previous_response_id:
            previous = await asyncio.to_thread(self.store.get, principal.tenant, owner, req.previous_response_id)
            if previous is None:
                raise NotFound(
                    f"No response with id '{req.previous_response_id}' found.", param="previous_response_id"
                )
            earlier = previous.history
        new = bridge.input_messages(req.input)
        if len(earlier) + len(new) > self.services.settings.limits.max_messages:
            raise InvalidRequest("The conversation is longer than this server's message cap.", param="input")
        instructions = [{"role": "system", "content": req.instructions}] if req.instructions else []
        body = bridge.chat_body(req, model, [*instructions, *earlier, *new], user)
        if req.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        ctx = RequestContext(
            request_id="rq-" + secrets.token_hex(8),
            endpoint="responses",
            model=model,
            tenant=principal.tenant,
            user=user,
            body=body,
            options=req.rapport or RapportOptions(),
            stream=bool(req.stream),
            original_messages=new,
        )
        ran = await self.pipeline.before(ctx)
        turn = _Turn(bridge.new_id("resp"), req, model, owner, [*earlier, *new], time.time())
        if self.services.upstream.passes_responses_through(model):
            # The stages ran on the same chat-shaped body as on the bridge, so they personalize both alike;
            # only the upstream call and the answer's translation differ.
            finish = functools.partial(self._finish, ctx, ran, turn)
            return await self.passthrough.answer(ctx, ran, req, principal, turn.response, finish)
        if ctx.stream:
            return await self._stream(ctx, ran, turn, principal)
        return await self._complete(ctx, ran, turn)

    async def _complete(self, ctx: RequestContext, ran: list[Stage], turn: _Turn) -> Response:
        result = await self.services.upstream.chat(ctx.model, ctx.body)
        choices = result.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = dict(choice.get("message") or {})
        content = message.get("content")
        text = self.pipeline.finalize_text(ctx, ran, content if isinstance(content, str) else "")
        message["content"] = text
        finish = choice.get("finish_reason")
        response = turn.response(bridge.output_items(message), finish, bridge.usage_of(result.get("usage")))
        await self._finish(ctx, ran, turn, response, text, finish, result.get("usage") or {})
        return Response(content=orjson.dumps(response), media_type="application/json", headers=self.pipeline.headers(ctx))

    async def _finish(
        self,
        ctx: RequestContext,
        ran: list[Stage],
        turn: _Turn,
        response: dict[str, Any],
        text: str,
        finish: str | None,
        usage: dict[str, Any],
    ) -> None:
        if ctx.user is not None:
            response["rapport"] = self.pipeline.extension(ctx)
        if turn.req.store is not False:
            stored = StoredResponse(
                turn.response_id,
                ctx.tenant,
                turn.owner,
                turn.created_at,
                {k: v for k, v in response.items() if k != "rapport"},
                [*turn.history, *bridge.history_messages(response["output"])],
            )
            await asyncio.to_thread(self.store.save, stored)
        self.pipeline.after(ctx, ran, Exchange(ctx.original_messages, text, ctx.model, finish, usage, turn.response_id))

    # -- stream -------------------------------------------------------------------------------------

    async def _stream(self, ctx: RequestContext, ran: list[Stage], turn: _Turn, principal: Principal) -> Response:
        events = self.services.upstream.chat_stream(ctx.model, ctx.body)
        first, slot = await open_stream(self.services.limiter, principal.key_id, events)
        return StreamingResponse(
            self._relay(ctx, ran, turn, first, events, slot),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **self.pipeline.headers(ctx)},
        )

    async def _relay(
        self,
        ctx: RequestContext,
        ran: list[Stage],
        turn: _Turn,
        first: dict[str, Any] | None,
        events: AsyncIterator[dict[str, Any]],
        slot: StreamSlot,
    ) -> AsyncIterator[bytes]:
        translator = bridge.StreamTranslator(base=turn.response([], None, None))
        if ctx.user is not None:
            translator.base["rapport"] = self.pipeline.extension(ctx)
        # The stages' filters (RPM keeps its reasoning out of the answer), tails in order as for chat.
        filters = ChoiceFilters(lambda: self.pipeline.stream_filters(ctx, ran))
        try:
            for event in translator.start():
                yield typed_sse(event)
            async for event in chain(first, events):
                for piece in filters.apply(event):
                    for out in translator.chunk(piece):
                        yield typed_sse(out)
            for piece in filters.tail_chunks():
                for out in translator.chunk(piece):
                    yield typed_sse(out)
            closing, output = translator.finish_events()
            for out in closing:
                yield typed_sse(out)
            response = turn.response(output, translator.finish, bridge.usage_of(translator.usage))
            text = "".join(translator.text)
            # Stored and recorded before the last event, so a client that continues at once finds it.
            await self._finish(ctx, ran, turn, response, text, translator.finish, translator.usage or {})
            kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
            yield typed_sse(translator.event(kind, response=response))
        except Exception as exc:
            # Mid-stream failure: an error event the SDKs raise on, then the end. Never a hang.
            yield stream_error_event(exc)
        finally:
            await self.services.limiter.close_stream(slot)
            await aclose_quietly(events)

    # -- stored responses ---------------------------------------------------------------------------

    async def retrieve(self, principal: Principal, request: Request, response_id: str) -> dict[str, Any]:
        stored = await asyncio.to_thread(self.store.get, principal.tenant, self._owner(request, principal), response_id)
        if stored is None:
            raise NotFound(f"No response with id '{response_id}' found.", param="response_id")
        return stored.response

    async def delete(self, principal: Principal, request: Request, response_id: str) -> dict[str, Any]:
        deleted = await asyncio.to_thread(self.store.delete, principal.tenant, self._owner(request, principal), response_id)
        if not deleted:
            raise NotFound(f"No response with id '{response_id}' found.", param="response_id")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    @staticmethod
    def _owner(request: Request, principal: Principal) -> str:
        # GET and DELETE carry no body: the user comes from the header or the key's bound user.
        return resolve_user(request.headers, dict(request.query_params), principal) or ANONYMOUS


class _Turn:
    """What one /v1/responses call carries from its start to its stored end."""

    def __init__(
        self, response_id: str, req: ResponsesRequest, model: str, owner: str, history: list[dict[str, Any]], created_at: float
    ) -> None:
        self.response_id, self.req, self.model, self.owner = response_id, req, model, owner
        self.history, self.created_at = history, created_at

    def response(self, output: list[dict[str, Any]], finish: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
        incomplete = "max_output_tokens" if finish == "length" else ("content_filter" if finish == "content_filter" else None)
        return bridge.response_object(
            self.response_id,
            self.req,
            self.model,
            output=output,
            status="incomplete" if incomplete else "completed",
            usage=usage,
            created_at=self.created_at,
            incomplete=incomplete,
        )

