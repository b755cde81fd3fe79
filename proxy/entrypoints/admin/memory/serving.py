"""Memory admin logic: maps the wire schemas onto the memory service and the job queue."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from memory.items import MemoryItem
from memory.jobs import Job, JobQueue
from proxy.entrypoints.admin.memory.protocol import (
    Deleted,
    Forgotten,
    ImportResult,
    JobList,
    JobOut,
    Memory,
    MemoryCreate,
    MemoryList,
    MemoryUpdate,
    SummaryList,
    SummaryOut,
    SummaryVersion,
    UserExport,
    UserImport,
    UserList,
    UserOut,
    UserProfile,
)
from proxy.errors import InvalidRequest, NotFound
from rapport.core.userdata import ImportFailed, is_empty

if TYPE_CHECKING:
    from memory.service import MemoryService


def to_memory(item: MemoryItem, score: float | None = None) -> Memory:
    return Memory(score=score, **item.to_dict())


def to_job(job: Job) -> JobOut:
    fields = job.to_dict()
    fields.pop("dedupe_key", None)
    return JobOut(**fields)


class MemoryAdmin:
    def __init__(self, service: MemoryService) -> None:
        self.service = service

    async def _require_user(self, tenant: str, user: str) -> None:
        if await self.service.user(tenant, user) is None:
            raise NotFound(f"No memory for user {user!r} in tenant {tenant!r}.", param="user")

    async def users(self, tenant: str | None, limit: int, offset: int) -> UserList:
        records, total = await self.service.users(tenant, limit, offset)
        return UserList(
            data=[UserOut(**r.to_dict()) for r in records], total=total, limit=limit, offset=offset
        )

    async def profile(self, tenant: str, user: str) -> UserProfile:
        record = await self.service.user(tenant, user)
        if record is None:
            raise NotFound(f"No memory for user {user!r} in tenant {tenant!r}.", param="user")
        items = await self.service.items(tenant, user)
        summaries = await self.service.summaries(tenant, user)
        by_task: dict[str, list[Any]] = {}
        for s in summaries:
            by_task.setdefault(s.task, []).append(s)
        versions = [
            SummaryVersion(
                task=task,
                latest_version=max(s.version for s in group),
                versions=len(group),
                updated_at=max(s.created_at for s in group),
            )
            for task, group in sorted(by_task.items())
        ]
        _, pending = await self.service.jobs.list(status="pending", tenant=tenant, user=user, limit=1)
        fields = record.to_dict()
        fields["items"] = len(items)
        return UserProfile(
            **fields,
            summaries=versions,
            roles=dict(Counter(it.role for it in items)),
            conversations=len({it.conversation_id for it in items if it.conversation_id}),
            pending_jobs=pending,
        )

    async def memories(
        self,
        tenant: str,
        user: str,
        q: str | None,
        filters: dict[str, Any],
        since: float | None,
        until: float | None,
        limit: int,
        offset: int,
    ) -> MemoryList:
        where = {k: v for k, v in filters.items() if v is not None}
        if q:
            found = await self.service.search(tenant, user, q, limit + offset, where or None)
            found = [(it, s) for it, s in found if _in_range(it, since, until)]
            page = found[offset : offset + limit]
            return MemoryList(
                data=[to_memory(it, s) for it, s in page], total=len(found), limit=limit, offset=offset
            )
        items = [
            it for it in await self.service.items(tenant, user, where or None) if _in_range(it, since, until)
        ]
        items.sort(key=lambda it: it.ts, reverse=True)
        return MemoryList(
            data=[to_memory(it) for it in items[offset : offset + limit]],
            total=len(items),
            limit=limit,
            offset=offset,
        )

    async def get(self, tenant: str, user: str, memory_id: str) -> Memory:
        item = await self.service.item(tenant, user, memory_id)
        if item is None:
            raise NotFound(f"No memory {memory_id!r} for user {user!r}.", param="memory_id")
        return to_memory(item)

    async def add(self, tenant: str, user: str, body: MemoryCreate) -> Memory:
        item = MemoryItem(
            tenant,
            user,
            body.text,
            body.role,
            body.ts if body.ts is not None else time.time(),
            body.conversation_id,
            None,
            body.task,
            "admin",
        )
        stored = await self.service.ingest([item])
        found = await self.service.item(tenant, user, item.id)
        if found is None:
            raise InvalidRequest("The memory text is empty after redaction.", param="text")
        # An exact duplicate (nothing newly stored) returns the existing item: it is stored once.
        del stored
        return to_memory(found)

    async def update(self, tenant: str, user: str, memory_id: str, body: MemoryUpdate) -> Memory:
        updated = await self.service.edit_item(
            tenant,
            user,
            memory_id,
            body.text,
            role=body.role,
            conversation_id=body.conversation_id,
            task=body.task,
        )
        if updated is None:
            raise NotFound(f"No memory {memory_id!r} for user {user!r}.", param="memory_id")
        return to_memory(updated)

    async def delete(self, tenant: str, user: str, memory_id: str) -> Deleted:
        if not await self.service.delete_item(tenant, user, memory_id):
            raise NotFound(f"No memory {memory_id!r} for user {user!r}.", param="memory_id")
        return Deleted(id=memory_id)

    async def summaries(self, tenant: str, user: str, task: str | None) -> SummaryList:
        found = await self.service.summaries(tenant, user, task)
        return SummaryList(
            data=[
                SummaryOut(**{k: v for k, v in s.to_dict().items() if k not in ("tenant", "user")})
                for s in found
            ]
        )

    async def regenerate(self, tenant: str, user: str, task: str | None) -> list[str]:
        await self._require_user(tenant, user)
        if task is not None and task not in self.service.settings.tasks:
            raise InvalidRequest(
                f"Unknown task {task!r}; configured: {sorted(self.service.settings.tasks)}.", param="task"
            )
        return await self.service.request_summaries(tenant, user, task)

    async def export(self, tenant: str, user: str) -> UserExport:
        """Every registered store's section; 404 when none of them holds anything of the user."""
        document = await self.service.jobs.userdata.export(tenant, user)
        if all(is_empty(section) for section in document["parts"].values()):
            raise NotFound(f"No data for user {user!r} in tenant {tenant!r}.", param="user")
        return UserExport.model_validate(document)

    async def import_(self, tenant: str, user: str, body: UserImport) -> ImportResult:
        try:
            document = body.document()
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in ("parts", "memory", *err["loc"]))
            raise InvalidRequest(f"Invalid value for '{where}': {err['msg']}", param=where) from exc
        try:
            imported, errors = await self.service.jobs.userdata.import_(tenant, user, document)
        except ImportFailed as exc:
            raise InvalidRequest(str(exc), param="parts") from exc
        if errors and not imported:
            # Nothing was imported: the client's document is what failed, named part by part.
            detail = "; ".join(f"{name}: {why}" for name, why in sorted(errors.items()))
            raise InvalidRequest(f"Nothing imported: {detail}", param=f"parts.{min(errors)}")
        memory = imported.get("memory", {})
        return ImportResult(
            items=memory.get("items", 0),
            duplicates=memory.get("duplicates", 0),
            summaries=memory.get("summaries", 0),
            parts=imported,
            errors=errors,
        )

    async def forget(self, tenant: str, user: str) -> Forgotten:
        removed = await self.service.forget(tenant, user)
        return Forgotten(tenant=tenant, user=user, removed=removed)


class JobsAdmin:
    def __init__(self, jobs: JobQueue) -> None:
        self.jobs = jobs

    async def list(
        self,
        status: str | None,
        kind: str | None,
        tenant: str | None,
        user: str | None,
        limit: int,
        offset: int,
    ) -> JobList:
        found, total = await self.jobs.list(
            status=status, kind=kind, tenant=tenant, user=user, limit=limit, offset=offset
        )
        return JobList(
            data=[to_job(j) for j in found],
            total=total,
            limit=limit,
            offset=offset,
            counts=await self.jobs.counts(),
        )

    async def get(self, job_id: str) -> JobOut:
        job = await self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"No job {job_id!r}.", param="job_id")
        return to_job(job)


def _in_range(item: MemoryItem, since: float | None, until: float | None) -> bool:
    return (since is None or item.ts >= since) and (until is None or item.ts <= until)
