"""Runs the stages around one upstream call and reports what each did."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from proxy.errors import RapportError
from proxy.pipeline.context import Exchange, RequestContext, StageReport
from proxy.pipeline.options import resolver_of
from proxy.pipeline.stage import AnswerRewritingStage, GeneratingStage, Stage, TextFilter
from proxy.services import Services

log = logging.getLogger("rapport.pipeline")


class Pipeline:
    def __init__(self, services: Services) -> None:
        self._services = services
        # Built with the servings, so when the app is created: a model's bad stage options fail the start.
        self._options = resolver_of(services)

    def active(self, ctx: RequestContext) -> list[Stage]:
        # Every stage's setting, resolved in one place before any stage looks; a bad option is refused even
        # when no user is named (nothing would run, but the client should learn its option is wrong).
        ctx.stage_options = self._options.resolve(ctx.model, ctx.options)
        if ctx.user is None:
            return []
        return [stage for stage in self._services.stages() if stage.wants(ctx)]

    async def before(self, ctx: RequestContext) -> list[Stage]:
        """Run each wanted stage's rewrite. A stage that breaks is skipped and reported, not fatal,
        unless it rejects the request itself (a RapportError such as a bad option: the client's to fix)."""
        ran: list[Stage] = []
        active = self.active(ctx)
        if active and ctx.user is not None:
            # Read your writes: the user's exchanges still being recorded on this replica go in first (bounded).
            wait_s = self._services.settings.server.recording_wait_ms / 1000.0
            if not await self._services.recordings.wait((ctx.tenant, ctx.user), wait_s):
                log.info("request %s: a recording of user %s was still in flight after %.0f ms", ctx.request_id, ctx.user, wait_s * 1000)
        for stage in active:
            started = time.perf_counter()
            try:
                detail = await stage.before(ctx)
            except RapportError:
                raise
            except Exception as exc:
                log.exception("stage %s failed before the upstream call", stage.name)
                ctx.degraded.append(f"{stage.name}: {exc.__class__.__name__}")
                ctx.reports.append(StageReport(stage.name, False, _ms(started), {"error": str(exc)[:200]}))
                continue
            elapsed = time.perf_counter() - started
            self._services.metrics.stage_latency.labels(stage.name).observe(elapsed)
            ctx.reports.append(StageReport(stage.name, True, elapsed * 1000.0, detail or {}))
            ran.append(stage)
        return ran

    def generator(self, ctx: RequestContext, ran: list[Stage]) -> GeneratingStage | None:
        for stage in ran:
            if isinstance(stage, GeneratingStage) and stage.generates(ctx):
                return stage
        return None

    @staticmethod
    def finalize_text(ctx: RequestContext, ran: list[Stage], text: str) -> str:
        """One choice's final text as the client sees it (the serving calls it for every choice)."""
        for stage in ran:
            if isinstance(stage, AnswerRewritingStage):
                text = stage.finalize_text(ctx, text)
        return text

    @staticmethod
    def stream_filters(ctx: RequestContext, ran: list[Stage]) -> list[TextFilter]:
        """A fresh chain of the stages' filters, for one streamed choice (filters hold per-choice state)."""
        filters = [stage.stream_filter(ctx) for stage in ran if isinstance(stage, AnswerRewritingStage)]
        return [f for f in filters if f is not None]

    def after(self, ctx: RequestContext, ran: list[Stage], exchange: Exchange) -> None:
        """Schedule learning from the exchange off the request path.

        The recording is marked as begun here, synchronously, before the response finishes, so that the same
        user's next request (which may arrive the moment this one ends) waits for it in `before`.
        """
        if not ran or not ctx.options.record or ctx.user is None:
            return
        finished = self._services.recordings.begin((ctx.tenant, ctx.user))
        self._services.background.spawn(_record(ran, ctx, exchange, finished), name="after-stages")

    @staticmethod
    def extension(ctx: RequestContext) -> dict[str, Any]:
        return {
            "request_id": ctx.request_id,
            "user": ctx.user,
            "stages": [
                {"name": r.name, "ran": r.ran, "duration_ms": round(r.duration_ms, 3), "detail": r.detail}
                for r in ctx.reports
            ],
            "degraded": list(ctx.degraded),
            "overhead_ms": round(sum(r.duration_ms for r in ctx.reports), 3),
        }

    @staticmethod
    def headers(ctx: RequestContext) -> dict[str, str]:
        headers = {"x-rapport-request-id": ctx.request_id}
        if ctx.user is None:
            return headers
        headers["x-rapport-stages"] = ",".join(r.name for r in ctx.reports if r.ran) or "none"
        if ctx.reports:
            headers["server-timing"] = ", ".join(f"{r.name};dur={r.duration_ms:.2f}" for r in ctx.reports)
        if ctx.degraded:
            headers["x-rapport-degraded"] = "; ".join(ctx.degraded)[:512]
        return headers


async def _record(ran: list[Stage], ctx: RequestContext, exchange: Exchange, finished: Callable[[], None]) -> None:
    try:
        await asyncio.gather(*(_safe_after(stage, ctx, exchange) for stage in ran))
    finally:
        finished()


async def _safe_after(stage: Stage, ctx: RequestContext, exchange: Exchange) -> None:
    try:
        await stage.after(ctx, exchange)
    except Exception:
        log.exception("stage %s failed to record the exchange", stage.name)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
