"""RPM plugin: the reasoning-path conditioning stage, its background construction job and admin API.

Reuses the shared embedder and job queue that the memory plugin builds (built here if memory is off).
Keeping the model's reasoning out of the answer: when a request does not ask for the reasoning, `before`
sets `ctx.state["rpm"]["strip_reasoning"] = True`; the chat serving then passes the final text through
`finalize_text(ctx, text)` (for every choice) and streamed deltas through `stream_filter(ctx)` (one filter
per choice index) (both below).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel

from proxy.pipeline.context import Exchange, RequestContext
from rapport.core.messages import append_system, last_user_text
from reasoning.rpm.engine import RPMEngine
from reasoning.rpm.feedback import FeedbackBook
from reasoning.rpm.feedback_store import FeedbackStore
from reasoning.rpm.generate import ReasoningStreamFilter, strip_reasoning
from reasoning.rpm.models import HistoryItem, RPMRequestOptions
from reasoning.rpm.store import RPMStore
from reasoning.rpm.store_schema import STORE as RPM_STORE

if TYPE_CHECKING:
    from memory.jobs import Job, Progress
    from proxy.plugins import Plugin
    from proxy.services import Services

log = logging.getLogger("rapport.rpm")

JOB_KIND = "rpm.build"
# ctx.state key: the user's forget generation when the request started (checked as the response is remembered).
FORGET_GENERATION = "rpm.forget_generation"


def finalize_text(ctx: RequestContext, text: str) -> str:
    """The final message as the client should see it (reasoning removed unless the request asked for it)."""
    return strip_reasoning(text) if ctx.state.get("rpm", {}).get("strip_reasoning") else text


def stream_filter(ctx: RequestContext) -> ReasoningStreamFilter | None:
    """A per-stream filter for content deltas, or None when nothing needs removing."""
    return ReasoningStreamFilter() if ctx.state.get("rpm", {}).get("strip_reasoning") else None


class RPMStage:
    name = "rpm"
    options_model: type[BaseModel] = RPMRequestOptions

    def __init__(self, plugin: RPMPlugin) -> None:
        self._plugin = plugin
        self._settings = plugin.services.settings
        self.default_on = self._settings.rpm.enabled_by_default

    def conditioning(self, ctx: RequestContext) -> bool:
        """Whether this request is conditioned: the request's choice, else the model's, else the stage default."""
        return ctx.stage_on(self.name)

    def finalize_text(self, ctx: RequestContext, text: str) -> str:
        return finalize_text(ctx, text)

    def stream_filter(self, ctx: RequestContext) -> ReasoningStreamFilter | None:
        return stream_filter(ctx)

    def wants(self, ctx: RequestContext) -> bool:
        if ctx.user is None or ctx.options.rpm is False:
            return False
        if self.conditioning(ctx):
            return True
        # Not conditioning, but still learning from the exchange (only when the operator opted into that).
        rpm = self._settings.rpm
        return rpm.learn_from_model_answers and rpm.learn_from_exchanges == "always" and ctx.options.record

    async def before(self, ctx: RequestContext) -> dict[str, Any]:
        options = ctx.stage_options[self.name].options
        assert ctx.user is not None and isinstance(options, RPMRequestOptions)
        # Read as the request starts: a forget landing before the recording keeps this response from being
        # remembered for feedback (reasoning/rpm/feedback_store.py).
        generation = self._plugin.feedback.generation(ctx.tenant, ctx.user)
        if not self.conditioning(ctx):
            ctx.state[FORGET_GENERATION] = await generation
            return {"conditioned": False, "learning": True}
        query = self._query(ctx)
        ctx.state[FORGET_GENERATION], cond = await asyncio.gather(
            generation, self._plugin.engine.condition(ctx.tenant, ctx.user, query, options)
        )
        strip = not cond.details.get("return_reasoning", False)
        ctx.state["rpm"] = {"strip_reasoning": strip and cond.system is not None}
        if cond.system is not None:
            self._inject(ctx, cond.system)
        return {"conditioned": cond.system is not None, **cond.details}

    @staticmethod
    def _query(ctx: RequestContext) -> str:
        # Chat and responses (bridged to chat messages) run the pipeline; /v1/completions is a pass-through.
        return last_user_text(ctx.body["messages"])

    @staticmethod
    def _inject(ctx: RequestContext, system: str) -> None:
        # Into the same leading system message memory extends: one message, whatever the stage order.
        ctx.body["messages"] = append_system(ctx.body["messages"], system)

    async def after(self, ctx: RequestContext, exchange: Exchange) -> None:
        if ctx.user is not None and isinstance(exchange.response_id, str):
            # Kept so that the user's feedback on this response can become history (reasoning/rpm/feedback.py).
            await self._plugin.feedback.remember(
                ctx.tenant, ctx.user, exchange.response_id, last_user_text(exchange.messages),
                strip_reasoning(exchange.response_text or ""), ctx.options.task, ctx.state.get(FORGET_GENERATION),
            )
        # The exchange's response is the model's answer, not the user's: learnt only when the operator
        # opted into that (rpm.learn_from_model_answers, off by default; see RPMSettings for why).
        if not self._settings.rpm.learn_from_model_answers:
            return
        mode = self._settings.rpm.learn_from_exchanges
        if ctx.user is None or mode == "never" or (mode == "when_enabled" and not self.conditioning(ctx)):
            return
        text = last_user_text(exchange.messages).strip()
        answer = strip_reasoning(exchange.response_text or "").strip()
        limit = self._settings.rpm.max_exchange_chars
        if not text or not answer or len(text) > limit or len(answer) > limit:
            return
        item = HistoryItem(input=text, response=answer, task=ctx.options.task)
        await self._plugin.engine.add_history(ctx.tenant, ctx.user, [item], source="exchange")
        await self._plugin.schedule(ctx.tenant, ctx.user)


class RPMPlugin:
    name = "rpm"

    def __init__(self, services: Services, engine: RPMEngine, owns_jobs: bool) -> None:
        self.services = services
        self.engine = engine
        self._owns_jobs = owns_jobs
        self._stage = RPMStage(self)
        feedback = services.settings.rpm.feedback
        self.feedback = FeedbackBook(
            feedback,
            FeedbackStore(engine.store, retention_s=feedback.retention_days * 86400.0, max_per_user=feedback.max_per_user),
        )
        services.jobs.register(JOB_KIND, self._run_job)
        # RPM's forget, export and import (every table of its store) in the user-data registry.
        from reasoning.rpm.userdata import rpm_part

        services.jobs.userdata.register(rpm_part(engine))

    def stages(self) -> list[Any]:
        return [self._stage]

    def routers(self) -> list[APIRouter]:
        from proxy.entrypoints.admin.rpm.api_router import build_router
        from proxy.entrypoints.feedback.api_router import build_router as feedback_router

        return [build_router(self), feedback_router(self)]

    async def start(self) -> None:
        if self._owns_jobs:
            await self.services.jobs.start()

    async def close(self) -> None:
        if self._owns_jobs:
            await self.services.jobs.close()
        self.engine.close()

    async def ready(self) -> tuple[bool, str]:
        return True, "ok"

    async def schedule(self, tenant: str, user: str, *, rebuild: bool = False, mode: str | None = None) -> str:
        """Queue (incremental) construction for a user; pending duplicates collapse into one job."""
        payload: dict[str, Any] = {"rebuild": rebuild, "mode": mode}
        key = None if rebuild else f"{JOB_KIND}:{tenant}:{user}"
        job_id: str = await self.services.jobs.enqueue(JOB_KIND, payload, tenant=tenant, user=user, dedupe_key=key)
        return job_id

    async def _run_job(self, job: Job, progress: Progress) -> None:
        async def report(done: int, total: int) -> None:
            await progress(done / max(total, 1), f"{done}/{total} steps")

        result = await self.engine.build(
            job.tenant, job.user, mode=job.payload.get("mode"), rebuild=bool(job.payload.get("rebuild")),
            progress=report,
        )
        await progress(1.0, f"{result.extracted} extracted, {result.skipped} skipped, {result.factors} factors")


def rpm_store(services: Services) -> RPMStore:
    """RPM's store on the server's databases: the shared PostgreSQL one, else `<data_dir>/rpm/rpm.sqlite3`
    (or the file under `rpm.store_dir` where the operator moved it)."""
    from rapport.core.database import Databases

    settings = services.settings
    if services.databases is None:
        services.databases = Databases(settings.database_config())
    migrate = settings.database.migrate_on_start
    if settings.rpm.store_dir is not None and not services.databases.shared:
        return RPMStore(Path(settings.rpm.store_dir) / "rpm.sqlite3", migrate=migrate)
    return RPMStore(services.databases.for_store(RPM_STORE), migrate=migrate)


def build(services: Services) -> Plugin | None:
    from proxy.stages.memory_plugin import build_shared

    owns_jobs = services.jobs is None
    build_shared(services)
    settings = services.settings
    llm = services.utility_llm(settings.rpm.utility_model) if settings.model_list else None
    engine = RPMEngine(settings.rpm, rpm_store(services), services.embedder, llm)
    plugin: Any = RPMPlugin(services, engine, owns_jobs)
    return plugin  # type: ignore[no-any-return]
