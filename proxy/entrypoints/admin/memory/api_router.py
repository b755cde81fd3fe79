"""Memory admin routes (`/admin/users...`) and background jobs (`/admin/jobs`), all behind the admin key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path, Query

from proxy.auth.deps import require_admin
from proxy.entrypoints.admin.memory.protocol import (
    Deleted,
    Forgotten,
    ImportResult,
    JobIds,
    JobList,
    JobOut,
    Memory,
    MemoryCreate,
    MemoryList,
    MemoryUpdate,
    RegenerateRequest,
    SummaryList,
    UserExport,
    UserImport,
    UserList,
    UserProfile,
)
from proxy.entrypoints.admin.memory.serving import JobsAdmin, MemoryAdmin

if TYPE_CHECKING:
    from proxy.services import Services
    from proxy.stages.memory_plugin import MemoryPlugin

Tenant = Annotated[str, Query(min_length=1, max_length=200, description="The user's tenant.")]
User = Annotated[str, Path(min_length=1, max_length=256)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


def build_memory_router(plugin: MemoryPlugin) -> APIRouter:
    assert plugin.service is not None
    admin = MemoryAdmin(plugin.service)
    router = APIRouter(prefix="/admin/users", tags=["admin: memory"], dependencies=[Depends(require_admin)])

    @router.get("", response_model=UserList, summary="List users with memory (paginated)")
    async def list_users(
        tenant: Annotated[str | None, Query(max_length=200)] = None, limit: Limit = 50, offset: Offset = 0
    ) -> UserList:
        return await admin.users(tenant, limit, offset)

    @router.get("/{user}", response_model=UserProfile, summary="A user's memory profile")
    async def profile(user: User, tenant: Tenant = "default") -> UserProfile:
        return await admin.profile(tenant, user)

    @router.delete("/{user}", response_model=Forgotten, summary="Forget a user everywhere")
    async def forget(user: User, tenant: Tenant = "default") -> Forgotten:
        return await admin.forget(tenant, user)

    @router.get("/{user}/memories", response_model=MemoryList, summary="List or semantically search memories")
    async def memories(
        user: User,
        tenant: Tenant = "default",
        q: Annotated[str | None, Query(max_length=4000, description="Semantic search query")] = None,
        role: Annotated[str | None, Query(max_length=32)] = None,
        conversation_id: Annotated[str | None, Query(max_length=256)] = None,
        task: Annotated[str | None, Query(max_length=64)] = None,
        source: Annotated[Literal["exchange", "admin", "import"] | None, Query()] = None,
        since: Annotated[float | None, Query(description="Unix time, inclusive")] = None,
        until: Annotated[float | None, Query(description="Unix time, inclusive")] = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> MemoryList:
        filters = {"role": role, "conversation_id": conversation_id, "task": task, "source": source}
        return await admin.memories(tenant, user, q, filters, since, until, limit, offset)

    @router.post("/{user}/memories", response_model=Memory, status_code=201, summary="Add a memory")
    async def add(user: User, body: MemoryCreate, tenant: Tenant = "default") -> Memory:
        return await admin.add(tenant, user, body)

    @router.get("/{user}/memories/{memory_id}", response_model=Memory)
    async def get(user: User, memory_id: str, tenant: Tenant = "default") -> Memory:
        return await admin.get(tenant, user, memory_id)

    @router.patch("/{user}/memories/{memory_id}", response_model=Memory, summary="Edit a memory (re-embeds)")
    async def update(user: User, memory_id: str, body: MemoryUpdate, tenant: Tenant = "default") -> Memory:
        return await admin.update(tenant, user, memory_id, body)

    @router.delete("/{user}/memories/{memory_id}", response_model=Deleted)
    async def delete(user: User, memory_id: str, tenant: Tenant = "default") -> Deleted:
        return await admin.delete(tenant, user, memory_id)

    @router.get("/{user}/summaries", response_model=SummaryList, summary="All summary versions, newest first")
    async def summaries(
        user: User, tenant: Tenant = "default", task: Annotated[str | None, Query(max_length=64)] = None
    ) -> SummaryList:
        return await admin.summaries(tenant, user, task)

    @router.post(
        "/{user}/summaries/regenerate",
        response_model=JobIds,
        status_code=202,
        summary="Queue summary rewrites",
    )
    async def regenerate(
        user: User, body: Annotated[RegenerateRequest | None, Body()] = None, tenant: Tenant = "default"
    ) -> JobIds:
        return JobIds(job_ids=await admin.regenerate(tenant, user, body.task if body else None))

    @router.get("/{user}/export", response_model=UserExport, summary="Export everything kept of a user (a section per store) as JSON")
    async def export(user: User, tenant: Tenant = "default") -> UserExport:
        return await admin.export(tenant, user)

    @router.post("/{user}/import", response_model=ImportResult, status_code=201, summary="Import an export (v2, or the memory-only v1)")
    async def import_(user: User, body: UserImport, tenant: Tenant = "default") -> ImportResult:
        return await admin.import_(tenant, user, body)

    return router


def build_jobs_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/admin/jobs", tags=["admin: jobs"], dependencies=[Depends(require_admin)])

    def admin() -> JobsAdmin:
        return JobsAdmin(services.jobs)

    @router.get("", response_model=JobList, summary="Background jobs with status and progress")
    async def list_jobs(
        status: Annotated[Literal["pending", "running", "succeeded", "failed"] | None, Query()] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        tenant: Annotated[str | None, Query(max_length=200)] = None,
        user: Annotated[str | None, Query(max_length=256)] = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> JobList:
        return await admin().list(status, kind, tenant, user, limit, offset)

    @router.get("/{job_id}", response_model=JobOut)
    async def get_job(job_id: str) -> JobOut:
        return await admin().get(job_id)

    return router
