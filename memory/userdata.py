"""Memory's part of the user-data registry (rapport/core/userdata.py): forget, export and import of a user's
items (vectors, lexical index) and summary versions."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from memory.catalog import Summary
from memory.items import MemoryItem
from rapport.core.userdata import Counts, ImportFailed

if TYPE_CHECKING:
    from memory.service import MemoryService

# Catalog users listed per page when a forget replay looks for a tenant's users.
OWNERS_PAGE = 1000


class MemoryUserData:
    """Items are re-embedded on import (the export carries text, not vectors) and get content ids, so a second
    import of the same document adds nothing; summary versions are written as exported."""

    name = "memory"

    def __init__(self, service: MemoryService) -> None:
        self.service = service

    async def forget(self, tenant: str, user: str) -> Counts:
        s = self.service
        # First, committed before anything is deleted: from here on every write begun before this forget
        # writes nothing (memory/generations.py), so nothing the deletes below miss can come back.
        await s._io(s.catalog.generations.bump, tenant, user)
        items = await s._io(s.store.delete_user, tenant, user)
        if s.lexical is not None:
            await s._io(s.lexical.delete_user, tenant, user)
        report = await s._io(s.catalog.forget, tenant, user)
        return {"items": items, **report}

    async def export(self, tenant: str, user: str) -> dict[str, Any]:
        items = await self.service.items(tenant, user)
        summaries = await self.service.summaries(tenant, user)
        return {"items": [it.to_dict() for it in items], "summaries": [s.to_dict() for s in summaries]}

    async def import_(self, tenant: str, user: str, data: Any) -> Counts:
        """Items and summaries into (tenant, user), whatever ids the export came from."""
        if not isinstance(data, dict) or not isinstance(data.get("items", []), list) or not isinstance(
            data.get("summaries", []), list
        ):
            raise ImportFailed("the memory section must be an object with 'items' and 'summaries' lists")
        try:
            items = [_item(tenant, user, raw) for raw in data.get("items", [])]
            summaries = [_summary(tenant, user, raw) for raw in data.get("summaries", [])]
        except (KeyError, TypeError, ValueError) as exc:
            # Checked before anything is written: a malformed row fails the section, not half of it.
            raise ImportFailed(f"a memory row is malformed ({exc.__class__.__name__}: {exc})") from exc
        s = self.service
        stored = await s.ingest(items) if items else []
        await s._sync_count(tenant, user)
        for summary in summaries:
            await s._io(s.catalog.touch, tenant, user, 0)
            await s._io(s.catalog.import_summary, summary)
        return {"items": len(stored), "duplicates": len(items) - len(stored), "summaries": len(summaries)}

    async def owners(self, tenant: str) -> set[str]:
        found: set[str] = set()
        offset = 0
        while True:
            records, total = await self.service.users(tenant, OWNERS_PAGE, offset)
            found.update(r.user for r in records)
            offset += len(records)
            if not records or offset >= total:
                return found


def _item(tenant: str, user: str, raw: dict[str, Any]) -> MemoryItem:
    text = raw.get("text")
    if not isinstance(text, str):
        raise ValueError("an item needs its text")
    return MemoryItem(
        tenant=tenant,
        user=user,
        text=text,
        role=raw.get("role") or "user",
        ts=float(raw.get("ts") or time.time()),
        conversation_id=raw.get("conversation_id"),
        model=raw.get("model"),
        task=raw.get("task"),
        source="import",
    )


def _summary(tenant: str, user: str, raw: dict[str, Any]) -> Summary:
    return Summary(
        tenant,
        user,
        str(raw["task"]),
        int(raw["version"]),
        str(raw["text"]),
        int(raw.get("item_count") or 0),
        raw.get("model"),
        float(raw.get("created_at") or time.time()),
    )
