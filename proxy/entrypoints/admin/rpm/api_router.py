"""RPM admin routes: `/admin/users/{user}/history` (import) and `/admin/users/{user}/rpm/...` (inspect)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Path, Query

from proxy.auth.deps import require_admin
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
from proxy.entrypoints.admin.rpm.serving import RPMAdmin
from reasoning.rpm.models import HistoryEntry, ReasoningPath

if TYPE_CHECKING:
    from proxy.stages.rpm_plugin import RPMPlugin

Tenant = Annotated[str, Query(min_length=1, max_length=200, description="The user's tenant.")]
User = Annotated[str, Path(min_length=1, max_length=256)]


def build_router(plugin: RPMPlugin) -> APIRouter:
    admin = RPMAdmin(plugin)
    router = APIRouter(prefix="/admin/users/{user}", tags=["admin: rpm"], dependencies=[Depends(require_admin)])

    @router.post("/history", response_model=HistoryImportResponse, status_code=201)
    async def import_history(user: User, body: HistoryImportRequest, tenant: Tenant = "default") -> HistoryImportResponse:
        return await admin.import_history(tenant, user, body)

    @router.get("/rpm", response_model=RPMSummary)
    async def summary(user: User, tenant: Tenant = "default") -> RPMSummary:
        return await admin.summary(tenant, user)

    @router.delete("/rpm", response_model=Deleted)
    async def forget(user: User, tenant: Tenant = "default") -> Deleted:
        return await admin.forget(tenant, user)

    @router.post("/rpm/rebuild", response_model=JobRef, status_code=202)
    async def rebuild(user: User, body: RebuildRequest | None = None, tenant: Tenant = "default") -> JobRef:
        return await admin.rebuild(tenant, user, body or RebuildRequest())

    @router.get("/rpm/history", response_model=EntryList)
    async def entries(
        user: User,
        tenant: Tenant = "default",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> EntryList:
        return await admin.entries(tenant, user, limit, offset)

    @router.get("/rpm/history/{entry_id}", response_model=HistoryEntry)
    async def entry(user: User, entry_id: int, tenant: Tenant = "default") -> HistoryEntry:
        return await admin.entry(tenant, user, entry_id)

    @router.delete("/rpm/history/{entry_id}", response_model=Deleted)
    async def delete_entry(user: User, entry_id: int, tenant: Tenant = "default") -> Deleted:
        return await admin.delete_entry(tenant, user, entry_id)

    @router.get("/rpm/features", response_model=FeatureList)
    async def features(user: User, tenant: Tenant = "default") -> FeatureList:
        return await admin.features(tenant, user)

    @router.get("/rpm/factors", response_model=FactorList)
    async def factors(user: User, tenant: Tenant = "default") -> FactorList:
        return await admin.factors(tenant, user)

    @router.get("/rpm/factors/{factor_id}", response_model=FactorDetail)
    async def factor(user: User, factor_id: int, tenant: Tenant = "default") -> FactorDetail:
        return await admin.factor(tenant, user, factor_id)

    @router.delete("/rpm/factors/{factor_id}", response_model=Deleted)
    async def delete_factor(user: User, factor_id: int, tenant: Tenant = "default") -> Deleted:
        return await admin.delete_factor(tenant, user, factor_id)

    @router.get("/rpm/paths", response_model=PathList)
    async def paths(user: User, tenant: Tenant = "default") -> PathList:
        return await admin.paths(tenant, user)

    @router.get("/rpm/paths/{entry_id}", response_model=ReasoningPath)
    async def path(user: User, entry_id: int, tenant: Tenant = "default") -> ReasoningPath:
        return await admin.path(tenant, user, entry_id)

    @router.delete("/rpm/paths/{entry_id}", response_model=Deleted)
    async def delete_path(user: User, entry_id: int, tenant: Tenant = "default") -> Deleted:
        return await admin.delete_path(tenant, user, entry_id)

    return router
