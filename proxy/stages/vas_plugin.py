"""VAS plugin: value-augmented sampling as a generating stage (Han et al., 2024).

When a request turns VAS on (`extra_body={"rapport": {"vas": ...}}`, or per-model/settings defaults) and
the value models are up, this stage decodes the answer itself, step by step against the request's
upstream, and reports steps, calls and time in the response's `rapport` extension. If a value backend is
down, or the request needs what VAS cannot honour (tools, response_format, n > 1, non-text parts,
logprobs...), VAS is off for that request: the plain upstream path answers it unchanged and the
extension says why. Within an answer, operator bounds (calls, value passes, deadline) and a value backend
failing midway stop the steering and the answer finishes plainly from the same prefix, reported.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel

from proxy.errors import InvalidRequest, UpstreamError
from proxy.pipeline.context import Exchange, RequestContext
from proxy.pipeline.options import OptionOutOfBounds
from proxy.pipeline.stage import Upstream
from reasoning.vas.backends import ValueBackendDown
from reasoning.vas.base_lm import BaseLM, BaseLMError, ChatPrefillLM, CompletionsLM
from reasoning.vas.decoding import DecodeResult
from reasoning.vas.engine import Plan, VASEngine, VASOptionError, VASRequest
from reasoning.vas.llama_base import LlamaCppLM
from reasoning.vas.request_fit import text_messages, unsupported
from reasoning.vas.store import ProfileStore
from reasoning.vas.store_schema import STORE as VAS_STORE

if TYPE_CHECKING:
    from proxy.plugins import Plugin
    from proxy.services import Services

log = logging.getLogger("rapport.vas")
_STATE = "vas"
# The profile file `<data_dir>/vas/vas.sqlite3` that `Databases.for_store(VAS_STORE)` opens.
DEFAULT_STORE_FILE = "vas.sqlite3"


class VASStage:
    name = "vas"
    options_model: type[BaseModel] = VASRequest

    def __init__(self, plugin: VASPlugin) -> None:
        self._plugin = plugin
        self._services = plugin.services
        self.default_on = plugin.services.settings.vas.enabled_by_default

    def check_options(self, options: BaseModel) -> None:
        """A model's VAS options against the operator's caps, at start (proxy/pipeline/options.py)."""
        assert isinstance(options, VASRequest)
        try:
            self._plugin.engine.check_caps(options)
        except VASOptionError as exc:
            field = exc.param.rsplit(".", 1)[-1]
            raise OptionOutOfBounds(str(exc).replace(exc.param, field), field) from exc

    def wants(self, ctx: RequestContext) -> bool:
        # Chat and responses: where VAS is on but cannot steer (a Responses request), before() says so.
        return ctx.user is not None and ctx.stage_on(self.name)

    async def before(self, ctx: RequestContext) -> dict[str, Any]:
        if ctx.endpoint != "chat":
            return {"applied": False, "reason": f"not applied: VAS steers chat completions only, not {ctx.endpoint}"}
        engine = self._plugin.engine
        req = ctx.stage_options[self.name].options
        assert isinstance(req, VASRequest)
        try:
            # Caps and value-model names depend on the server's settings, so they are checked here, per plan.
            plan = await asyncio.to_thread(engine.plan, req, ctx.tenant, ctx.user, ctx.body)
        except VASOptionError as exc:
            raise InvalidRequest(str(exc), param=exc.param) from exc
        detail: dict[str, Any] = {"mode": plan.params.mode, "beta": plan.params.beta, "weights": plan.weights,
                                  "weights_from": plan.weights_from}
        cannot = unsupported(ctx.body)
        if cannot is not None:
            # Not a failure: the request needs what VAS cannot give, so the plain path answers it as sent.
            detail.update(applied=False, reason=f"not applied: {cannot}")
            return detail
        off = await self._unavailable(plan)
        if off is not None:
            detail.update(applied=False, reason=off)
            ctx.degraded.append(f"vas: {off}")
        else:
            detail["applied"] = True
            ctx.state[_STATE] = (plan, detail)
        return detail

    async def _unavailable(self, plan: Plan) -> str | None:
        engine = self._plugin.engine
        if engine.template_tokenizer is None and engine.settings.base_api == "completions":
            return "no chat template for the base model (vas.prompt_template)"
        if engine.settings.base_api == "llama_cpp" and engine.base_model is None:
            return f"in-process base model unavailable: {engine.base_error or 'not loaded'}"
        if plan.params.beta == 0 or not plan.weights:
            return None
        for name in plan.weights:
            backend = engine.backends.get(name)
            if backend is None:
                return f"value model {name} unavailable: {engine.load_errors.get(name, 'not loaded')}"
            ok, why = await backend.ready()
            if not ok:
                return f"value backend down: {why}"
        return None

    async def after(self, ctx: RequestContext, exchange: Exchange) -> None:
        return None

    def generates(self, ctx: RequestContext) -> bool:
        return _STATE in ctx.state

    def _base(self, ctx: RequestContext, upstream: Upstream) -> BaseLM:
        engine = self._plugin.engine
        settings = engine.settings
        if settings.base_api == "llama_cpp" and engine.base_model is not None:
            return LlamaCppLM(engine.base_model, engine.render)
        if settings.base_api == "chat_prefill":
            async def post_chat(path: str, body: dict[str, Any]) -> dict[str, Any]:
                return await upstream.chat(body)

            return ChatPrefillLM(post_chat, ctx.model, dict(settings.upstream_extra))
        router = self._services.upstream

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            return await router.request(ctx.model, path, body)

        return CompletionsLM(post, self._plugin.engine.render, ctx.model, dict(settings.upstream_extra),
                             dict(settings.logprob_extra))

    async def _run(self, ctx: RequestContext, upstream: Upstream, emit: Any = None) -> DecodeResult | None:
        """Decode the answer; None when VAS could not start (a value model missing): nothing was sent yet."""
        plan, detail = ctx.state[_STATE]
        messages = text_messages(ctx.body)
        try:
            result = await self._plugin.engine.run(self._base(ctx, upstream), messages, plan, emit)
        except ValueBackendDown as exc:
            detail.update(applied=False, reason=f"value backend down: {exc}"[:300])
            ctx.degraded.append("vas: value backend down")
            return None
        except BaseLMError as exc:
            raise UpstreamError(f"VAS cannot decode with this upstream: {exc}") from exc
        if result.prompt_tokens is None:
            result.prompt_tokens = await asyncio.to_thread(self._plugin.engine.count_prompt_tokens, messages)
        detail.update(result.details(plan.params.mode, plan.params.beta))
        if result.stopped is not None and result.stopped != "ambiguous_empty_token":
            ctx.degraded.append(f"vas: stopped steering ({result.stopped})")
        self._services.metrics.stage_latency.labels("vas_decode").observe(result.ms / 1000.0)
        return result

    async def generate(self, ctx: RequestContext, upstream: Upstream) -> dict[str, Any]:
        result = await self._run(ctx, upstream)
        if result is None:
            return await upstream.chat(ctx.body)
        return {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ctx.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                 "finish_reason": result.finish_reason}
            ],
            "usage": _usage(result),
        }

    async def generate_stream(self, ctx: RequestContext, upstream: Upstream) -> AsyncIterator[dict[str, Any]]:
        """Chunks as tokens are chosen. Nothing is yielded before the first decoding step succeeded, so a
        failure there propagates out of the first `__anext__` (a real HTTP status); after it, a failure
        ends the stream with the error the relay sends: never a restart, never a second role chunk."""
        cid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": ctx.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def emit(piece: str) -> None:
            await queue.put(piece)

        async def produce() -> DecodeResult | None:
            try:
                return await self._run(ctx, upstream, emit)
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(produce())
        try:
            first = await queue.get()
            if first is None:
                result = await task  # raises here, before any chunk, when the first step failed
                if result is None:  # VAS could not start: the plain stream answers (nothing sent yet)
                    async for event in upstream.chat_stream(ctx.body):
                        yield event
                    return
            yield chunk({"role": "assistant", "content": ""})
            piece = first
            while piece is not None:
                yield chunk({"content": piece})
                piece = await queue.get()
            result = await task
        finally:
            if not task.done():
                task.cancel()
        assert result is not None  # a run that emitted a piece has started
        _, detail = ctx.state[_STATE]
        # The first chunk's `rapport` extension was taken after the first step; the totals travel here.
        yield chunk({}, result.finish_reason, rapport={"vas": dict(detail)})
        options = ctx.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": ctx.model,
                   "choices": [], "usage": _usage(result)}


def _usage(result: DecodeResult) -> dict[str, int]:
    prompt = result.prompt_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": result.base_tokens,
            "total_tokens": prompt + result.base_tokens}


def profile_store(services: Services) -> ProfileStore:
    """VAS profiles on the server's databases: the shared PostgreSQL one, else `<data_dir>/vas/vas.sqlite3`
    (or the file `vas.store_file` names there)."""
    from rapport.core.database import Databases

    settings = services.settings
    if services.databases is None:
        services.databases = Databases(settings.database_config())
    migrate = settings.database.migrate_on_start
    if settings.vas.store_file != DEFAULT_STORE_FILE and not services.databases.shared:
        return ProfileStore(settings.data_dir / "vas" / settings.vas.store_file, migrate=migrate)
    return ProfileStore(services.databases.for_store(VAS_STORE), migrate=migrate)


class VASPlugin:
    name = "vas"

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        self.engine = VASEngine(settings.vas, settings.data_dir / "vas", profile_store(services))
        self._stage = VASStage(self)
        if services.jobs is not None and hasattr(services.jobs, "userdata"):
            # VAS profiles' forget, export and import in the user-data registry.
            from reasoning.vas.userdata import vas_part

            services.jobs.userdata.register(vas_part(self.engine.store))

    def stages(self) -> list[Any]:
        return [self._stage]

    def routers(self) -> list[APIRouter]:
        from proxy.entrypoints.admin.vas.api_router import build_router

        return [build_router(self)]

    async def start(self) -> None:
        await asyncio.to_thread(self.engine.load)

    async def close(self) -> None:
        await self.engine.close()

    async def ready(self) -> tuple[bool, str]:
        if not self.engine.settings.value_models:
            return True, "no value models configured"
        return await self.engine.ready()


def build(services: Services) -> Plugin | None:
    plugin: Any = VASPlugin(services)
    return plugin  # type: ignore[no-any-return]
