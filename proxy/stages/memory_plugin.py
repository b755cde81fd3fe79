"""Memory plugin: builds the shared embedder and job queue, the memory stage and the memory admin API."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from pydantic import BaseModel

from memory.catalog_schema import STORE as CATALOG_STORE
from memory.embedding import make_embedder
from memory.embedding_meta import check_embedder
from memory.jobs import JobQueue
from memory.service import MemoryOptions, MemoryService
from proxy.errors import ServiceUnavailable
from proxy.pipeline.context import Exchange, RequestContext
from rapport.core.database import Databases

if TYPE_CHECKING:
    from proxy.pipeline.stage import Stage
    from proxy.plugins import Plugin
    from proxy.services import Services

log = logging.getLogger("rapport.memory")
# The name under which the memory vectors ask `Databases` for their database (shared state only).
VECTOR_STORE = "memory/vectors"


class MemoryStage:
    name = "memory"
    options_model: type[BaseModel] = MemoryOptions
    # On for every named user unless the model or the request turns it off (`memory.enabled: false` builds
    # no stage at all).
    default_on = True

    def __init__(self, services: Services, service: MemoryService) -> None:
        self._services = services
        self.service = service

    def wants(self, ctx: RequestContext) -> bool:
        return ctx.user is not None and ctx.stage_on(self.name)

    async def before(self, ctx: RequestContext) -> dict[str, Any]:
        assert ctx.user is not None
        options = ctx.stage_options[self.name].options
        assert isinstance(options, MemoryOptions)
        if options.task is None and ctx.options.task is not None:
            options = options.model_copy(update={"task": ctx.options.task})
        ctx.state["memory.options"] = options
        # Chat and responses (bridged to chat messages) run the pipeline, so messages are all there is.
        try:
            messages, retrieval = await self.service.compose(ctx.tenant, ctx.user, ctx.body["messages"], options)
        except Exception as exc:
            if self._services.settings.degrade_on_store_failure:
                if options.store and ctx.options.record:
                    # Served without memory: the stage did not run, so this exchange will not be recorded either.
                    self._services.metrics.recordings_lost.labels(self.name).inc()
                raise
            raise ServiceUnavailable(f"Memory store unavailable: {exc.__class__.__name__}") from exc
        ctx.body["messages"] = messages
        ctx.state["memory.task"] = retrieval.task
        # The recording after the response writes nothing if the user is forgotten meanwhile (memory/generations.py).
        ctx.state["memory.generation"] = retrieval.generation
        return retrieval.details()

    async def after(self, ctx: RequestContext, exchange: Exchange) -> None:
        options: MemoryOptions = ctx.state.get("memory.options") or MemoryOptions()
        if ctx.user is None or not options.store or not ctx.options.record:
            return
        messages = exchange.messages or ctx.original_messages
        try:
            await self.service.record_exchange(
                ctx.tenant,
                ctx.user,
                messages,
                exchange.response_text,
                conversation_id=ctx.options.conversation_id,
                model=exchange.model or ctx.model,
                task=ctx.state.get("memory.task"),
                generation=ctx.state.get("memory.generation"),
            )
        except Exception as exc:
            # The response has gone: the exchange is lost, not buffered on this replica's disk or in memory
            # for later (a replica's buffer is invisible to the others and dies with it). Counted and logged.
            self._services.metrics.recordings_lost.labels(self.name).inc()
            log.warning(
                "memory: an exchange of request %s could not be recorded and is lost (%s: %s)",
                ctx.request_id,
                exc.__class__.__name__,
                str(exc)[:200],
            )


class MemoryPlugin:
    name = "memory"

    def __init__(self, services: Services, service: MemoryService | None) -> None:
        from proxy.entrypoints.admin.memory.api_router import build_jobs_router, build_memory_router

        self._services = services
        self.service = service
        self._stages: list[Stage] = [MemoryStage(services, service)] if service is not None else []
        self._routers: list[APIRouter] = [build_jobs_router(services)]
        if service is not None:
            self._routers.append(build_memory_router(self))

    def stages(self) -> list[Stage]:
        return list(self._stages)

    def routers(self) -> list[APIRouter]:
        return list(self._routers)

    async def start(self) -> None:
        if self.service is not None:
            # Load the embedding model now so that the first request does not pay for it.
            warm = getattr(self._services.embedder, "warm", None)
            if warm is not None:
                await warm()
            # A store built with another embedding model is refused here, before any request is served.
            await asyncio.to_thread(check_embedder, self.service.catalog.embedding, self._services.embedder)
        await self._services.jobs.start()

    async def close(self) -> None:
        await self._services.jobs.close()
        if self.service is not None:
            await self.service.writer.aclose()
            self.service.close()
        close = getattr(self._services.embedder, "close", None)
        if close is not None:
            close()

    async def ready(self) -> tuple[bool, str]:
        if not self._services.jobs.running:
            return False, "job queue not running"
        if self.service is not None:
            ok = await asyncio.to_thread(self.service.store.heartbeat)
            if not ok:
                return False, "memory store unreachable"
        databases = self._services.databases
        if databases is not None and databases.shared:
            # The catalog and the job queue live there whatever holds the vectors (a Chroma server may be up
            # while PostgreSQL is down). A pool connection is checked out with a ping, so once the server is
            # back the next check succeeds: no restart.
            db = databases.for_store(VECTOR_STORE)
            try:
                await db.run(db.ping)
            except Exception as exc:
                return False, f"database unreachable ({exc.__class__.__name__})"
        return True, "ok"


def build_shared(services: Services) -> None:
    """The embedder and job queue exist even with memory disabled: RPM reuses them."""
    settings = services.settings.memory
    if services.embedder is None:
        services.embedder = make_embedder(
            settings.embedding_model,
            backend=settings.embedding_backend,
            query_backend=settings.query_embedding_backend,
            batch_size=settings.embedding_batch_size,
            cache_size=settings.query_cache_size,
            threads=settings.embedding_threads,
            cache_dir=settings.embedding_cache_dir,
            bf16=settings.embedding_bf16,
        )
    if services.jobs is None:
        if services.databases is None:
            services.databases = Databases(services.settings.database_config())
        database = services.settings.database
        services.jobs = JobQueue(
            services.databases.for_store("jobs"),
            workers=settings.job_workers,
            max_attempts=settings.job_max_attempts,
            lease_s=database.job_lease_s,
            replica_id=database.replica_id,
            migrate=database.migrate_on_start,
            # The embedded store has one serving process (its data dir is locked), so a job running at start
            # was orphaned by a crash; with shared state, other replicas' running jobs are theirs.
            exclusive=not services.databases.shared,
        )


def build(services: Services) -> Plugin | None:
    build_shared(services)
    settings = services.settings.memory
    service = None
    if settings.enabled:
        if services.databases is None:
            services.databases = Databases(services.settings.database_config())
        service = MemoryService(
            settings,
            data_dir=services.settings.data_dir,
            embedder=services.embedder,
            jobs=services.jobs,
            llm_factory=lambda: services.utility_llm(settings.summary_model),
            catalog_db=services.databases.for_store(CATALOG_STORE),
            # database_url set: vectors in pgvector on the shared database, nothing of memory in the data dir.
            shared_db=services.databases.for_store(VECTOR_STORE) if services.databases.shared else None,
            migrate=services.settings.database.migrate_on_start,
        )
    plugin: Any = MemoryPlugin(services, service)
    return plugin  # type: ignore[no-any-return]
