"""Memory plugin: builds the shared embedder and job queue, then the memory stage and admin API."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from memory.embedding import SentenceTransformerEmbedder
from memory.jobs import JobQueue

if TYPE_CHECKING:
    from proxy.pipeline.stage import Stage
    from proxy.plugins import Plugin
    from proxy.services import Services

log = logging.getLogger("rapport.memory")


class MemoryPlugin:
    name = "memory"

    def __init__(self, services: Services) -> None:
        self._services = services
        self._stages: list[Stage] = []
        self._routers: list[APIRouter] = []

    def stages(self) -> list[Stage]:
        return list(self._stages)

    def routers(self) -> list[APIRouter]:
        return list(self._routers)

    async def start(self) -> None:
        await self._services.jobs.start()

    async def close(self) -> None:
        await self._services.jobs.close()
        self._services.embedder.close()

    async def ready(self) -> tuple[bool, str]:
        return (self._services.jobs.running, "ok" if self._services.jobs.running else "job queue not running")


def build_shared(services: Services) -> None:
    """The embedder and job queue exist even with memory disabled: RPM reuses them."""
    settings = services.settings.memory
    if services.embedder is None:
        services.embedder = SentenceTransformerEmbedder(
            settings.embedding_model,
            batch_size=settings.embedding_batch_size,
            cache_size=settings.query_cache_size,
        )
    if services.jobs is None:
        services.jobs = JobQueue(
            services.settings.data_dir / "jobs.sqlite3",
            workers=settings.job_workers,
            max_attempts=settings.job_max_attempts,
        )


def build(services: Services) -> Plugin | None:
    build_shared(services)
    plugin: Any = MemoryPlugin(services)
    return plugin  # type: ignore[no-any-return]
