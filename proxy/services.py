"""Everything a running Rapport holds, built once per app and shared by routes, stages and plugins."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memory.llm import ChatLLM
from proxy.auth.keys import KeyStore
from proxy.datadir_lock import DataDirLock
from proxy.metrics import Metrics
from proxy.pipeline.recordings import RecordingsInFlight
from proxy.ratelimit import RateLimiter
from proxy.settings import RapportSettings
from proxy.upstream.router import UpstreamRouter
from rapport.core.database import Databases

if TYPE_CHECKING:
    from proxy.pipeline.options import StageOptionsResolver
    from proxy.plugins import Plugin

log = logging.getLogger("rapport")


class BackgroundTasks:
    """Tracks fire-and-forget work (recording exchanges) so that shutdown can drain it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "rapport-bg") -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def drain(self, timeout: float = 30.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def __len__(self) -> int:
        return len(self._tasks)


@dataclass
class Services:
    settings: RapportSettings
    upstream: UpstreamRouter
    keys: KeyStore
    limiter: RateLimiter
    metrics: Metrics
    background: BackgroundTasks = field(default_factory=BackgroundTasks)
    recordings: RecordingsInFlight = field(default_factory=RecordingsInFlight)
    plugins: list[Plugin] = field(default_factory=list)
    # Shared infrastructure that the memory plugin creates and the RPM plugin reuses
    # (typed loosely here so that the proxy core does not depend on their construction).
    embedder: Any = None
    jobs: Any = None
    # Held for the life of a server on the embedded store (see proxy/datadir_lock.py).
    datadir_lock: DataDirLock | None = None
    # The databases the stores are given (one shared PostgreSQL, or a SQLite file per store); None until built.
    databases: Databases | None = None
    # Every stage's options resolved per request (proxy/pipeline/options.py); built when the servings are.
    stage_options: StageOptionsResolver | None = None

    def utility_llm(self, model: str | None = None) -> ChatLLM:
        """The LLM that writes summaries and extractions: a named model, else the default upstream."""
        return self.upstream.as_chat_llm(model or self.settings.default_model or "")

    @classmethod
    def build(cls, settings: RapportSettings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = None
        if not settings.shared_state:
            lock = DataDirLock(settings.data_dir)
            lock.acquire()
        try:
            metrics = Metrics()
            databases = Databases(settings.database_config())
            try:
                keys = KeyStore(
                    databases.for_store("keys"),
                    settings.auth,
                    # Open mode (no keys at all) is for one developer's machine, never for shared replicas.
                    allow_open_mode=not settings.shared_state,
                    migrate=settings.database.migrate_on_start,
                )
                return cls(
                    settings=settings,
                    upstream=UpstreamRouter(settings),
                    keys=keys,
                    limiter=RateLimiter(settings.limits, metrics),
                    metrics=metrics,
                    datadir_lock=lock,
                    databases=databases,
                )
            except BaseException:
                databases.close()
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    async def start(self) -> None:
        for plugin in self.plugins:
            await plugin.start()

    async def close(self) -> None:
        await self.background.drain()
        for plugin in reversed(self.plugins):
            try:
                await plugin.close()
            except Exception:
                log.exception("closing plugin %s failed", plugin.name)
        await self.upstream.close()
        await self.limiter.close()
        self.keys.close()
        if self.databases is not None:
            self.databases.close()
        if self.datadir_lock is not None:
            self.datadir_lock.release()

    def stages(self) -> list[Any]:
        return [stage for plugin in self.plugins for stage in plugin.stages()]
