"""Typed results of the Rapport admin API (mirrors of the server's wire schemas; no server imports)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    # New server fields must not break old clients.
    model_config = ConfigDict(extra="allow")


class Memory(_Model):
    id: str
    tenant: str
    user: str
    text: str
    role: str
    ts: float
    conversation_id: str | None = None
    model: str | None = None
    task: str | None = None
    source: str = "exchange"
    score: float | None = None


class MemoryList(_Model):
    data: list[Memory]
    total: int
    limit: int
    offset: int


class User(_Model):
    tenant: str
    user: str
    items: int
    since_summary: int = 0
    created_at: float
    last_seen: float


class UserList(_Model):
    data: list[User]
    total: int
    limit: int
    offset: int


class SummaryVersion(_Model):
    task: str
    latest_version: int
    versions: int
    updated_at: float


class UserProfile(User):
    summaries: list[SummaryVersion] = []
    roles: dict[str, int] = {}
    conversations: int = 0
    pending_jobs: int = 0


class Summary(_Model):
    task: str
    version: int
    text: str
    item_count: int
    model: str | None = None
    created_at: float


class Job(_Model):
    id: str
    kind: str
    tenant: str
    user: str
    status: str
    attempts: int
    max_attempts: int
    progress: float
    message: str | None = None
    error: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    payload: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")


class JobList(_Model):
    data: list[Job]
    total: int
    limit: int
    offset: int
    counts: dict[str, int] = {}


class ImportResult(_Model):
    # Memory's counts.
    items: int
    duplicates: int
    summaries: int
    # What each store's section imported, and why one failed (the others were still imported).
    parts: dict[str, dict[str, int]] = {}
    errors: dict[str, str] = {}


class Forgotten(_Model):
    tenant: str
    user: str
    removed: dict[str, Any]


class FeedbackResult(_Model):
    """What a feedback became: RPM history entries (built in the background by `job_id`)."""

    response_id: str
    user: str
    entry_ids: list[int]
    replaced: int
    job_id: str | None = None
    rating: float | None = None
    choice: str | None = None
    correction: str | None = None
