"""RPM admin logic: import labelled history, inspect and delete what RPM derived, schedule rebuilds."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.entrypoints.admin.rpm.protocol import (
    Deleted,
    EntryList,
    FactorDetail,
    FactorList,
    FeatureList,
    HistoryImportRequest,
    HistoryImportResponse,
    JobRef,
    PathList,
    RebuildRequest,
    RPMSummary,
)
from proxy.errors import NotFound
from reasoning.rpm.models import HistoryEntry, ReasoningPath

if TYPE_CHECKING:
    from proxy.stages.rpm_plugin import RPMPlugin


class RPMAdmin:
    def __init__(self, plugin: RPMPlugin) -> None:
        self.plugin = plugin
        self.engine = plugin.engine
        self.store = plugin.engine.store

    async def import_history(self, tenant: str, user: str, req: HistoryImportRequest) -> HistoryImportResponse:
        ids = await self.engine.add_history(tenant, user, req.items, source="import")
        job_id = await self.plugin.schedule(tenant, user) if req.build else None
        return HistoryImportResponse(tenant=tenant, user=user, imported=len(ids), entry_ids=ids, job_id=job_id)

    async def summary(self, tenant: str, user: str) -> RPMSummary:
        data = await self.engine.summary(tenant, user)
        jobs, _ = await self.plugin.services.jobs.list(kind="rpm.build", tenant=tenant, user=user, limit=5)
        return RPMSummary(tenant=tenant, user=user, jobs=[j.to_dict() for j in jobs], **data)

    async def entries(self, tenant: str, user: str, limit: int, offset: int) -> EntryList:
        rows = await asyncio.to_thread(self.store.entries, tenant, user, limit=limit, offset=offset)
        return EntryList(data=rows)

    async def entry(self, tenant: str, user: str, entry_id: int) -> HistoryEntry:
        rows = await asyncio.to_thread(self.store.entries, tenant, user, ids=[entry_id], details=True)
        if not rows:
            raise NotFound(f"No history entry {entry_id} for user {user!r}.", param="entry_id")
        return rows[0]

    async def delete_entry(self, tenant: str, user: str, entry_id: int) -> Deleted:
        if not await asyncio.to_thread(self.store.delete_entry, tenant, user, entry_id):
            raise NotFound(f"No history entry {entry_id} for user {user!r}.", param="entry_id")
        # Factors are statistics over the history: recompute them without the deleted entry.
        await self.engine.builder.recluster(tenant, user)
        return Deleted(object="rpm.history_entry", id=str(entry_id))

    async def features(self, tenant: str, user: str) -> FeatureList:
        return FeatureList(data=await asyncio.to_thread(self.store.features, tenant, user))

    async def factors(self, tenant: str, user: str) -> FactorList:
        return FactorList(data=await asyncio.to_thread(self.store.factors, tenant, user))

    async def factor(self, tenant: str, user: str, factor_id: int) -> FactorDetail:
        factors = {f.id: f for f in await asyncio.to_thread(self.store.factors, tenant, user)}
        if factor_id not in factors:
            raise NotFound(f"No factor {factor_id} for user {user!r}.", param="factor_id")
        members = await asyncio.to_thread(self.store.features, tenant, user, factor_id=factor_id)
        return FactorDetail(**factors[factor_id].model_dump(), features=members)

    async def delete_factor(self, tenant: str, user: str, factor_id: int) -> Deleted:
        if not await asyncio.to_thread(self.store.delete_factor, tenant, user, factor_id):
            raise NotFound(f"No factor {factor_id} for user {user!r}.", param="factor_id")
        return Deleted(object="rpm.factor", id=str(factor_id))

    async def paths(self, tenant: str, user: str) -> PathList:
        return PathList(data=await asyncio.to_thread(self.store.paths, tenant, user))

    async def path(self, tenant: str, user: str, entry_id: int) -> ReasoningPath:
        rows = await asyncio.to_thread(self.store.paths, tenant, user, entry_ids=[entry_id])
        if not rows:
            raise NotFound(f"No reasoning path for entry {entry_id} of user {user!r}.", param="entry_id")
        return rows[0]

    async def delete_path(self, tenant: str, user: str, entry_id: int) -> Deleted:
        if not await asyncio.to_thread(self.store.delete_path, tenant, user, entry_id):
            raise NotFound(f"No reasoning path for entry {entry_id} of user {user!r}.", param="entry_id")
        return Deleted(object="rpm.reasoning_path", id=str(entry_id))

    async def rebuild(self, tenant: str, user: str, req: RebuildRequest) -> JobRef:
        return JobRef(job_id=await self.plugin.schedule(tenant, user, rebuild=req.full, mode=req.mode))

    async def forget(self, tenant: str, user: str) -> Deleted:
        """Remove RPM's data for the user (memory keeps its own; forgetting the whole user goes through
        the job queue's forget hooks, which include this store). A build running now finishes first."""
        removed = await self.engine.forget(tenant, user)
        return Deleted(object="rpm.user", id=user, removed={"entries": removed})
