"""Wire schemas of the memory and jobs admin API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["user", "assistant", "system", "note"]


class Memory(BaseModel):
    object: Literal["memory"] = "memory"
    id: str
    tenant: str
    user: str
    text: str
    role: str
    ts: float
    conversation_id: str | None = None
    model: str | None = None
    task: str | None = None
    source: str
    score: float | None = Field(default=None, description="Cosine similarity to `q` (search only).")


class MemoryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Memory]
    total: int
    limit: int
    offset: int


class MemoryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=100_000)
    role: Role = "user"
    ts: float | None = None
    conversation_id: str | None = Field(default=None, max_length=256)
    task: str | None = Field(default=None, max_length=64)


class MemoryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, min_length=1, max_length=100_000)
    role: Role | None = None
    conversation_id: str | None = Field(default=None, max_length=256)
    task: str | None = Field(default=None, max_length=64)


class SummaryOut(BaseModel):
    object: Literal["memory.summary"] = "memory.summary"
    task: str
    version: int
    text: str
    item_count: int
    model: str | None
    created_at: float


class SummaryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SummaryOut]


class RegenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str | None = Field(default=None, description="One task; all configured tasks when absent.")


class JobIds(BaseModel):
    object: Literal["list"] = "list"
    job_ids: list[str]


class UserOut(BaseModel):
    object: Literal["memory.user"] = "memory.user"
    tenant: str
    user: str
    items: int
    since_summary: int
    created_at: float
    last_seen: float


class UserList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UserOut]
    total: int
    limit: int
    offset: int


class SummaryVersion(BaseModel):
    task: str
    latest_version: int
    versions: int
    updated_at: float


class UserProfile(UserOut):
    object: Literal["memory.user"] = "memory.user"
    summaries: list[SummaryVersion]
    roles: dict[str, int]
    conversations: int
    pending_jobs: int


class ExportItem(BaseModel):
    id: str | None = None
    text: str = Field(min_length=1)
    role: str = "user"
    ts: float | None = None
    conversation_id: str | None = None
    model: str | None = None
    task: str | None = None
    source: str | None = None
    tenant: str | None = None
    user: str | None = None


class ExportSummary(BaseModel):
    task: str
    version: int = Field(ge=1)
    text: str
    item_count: int = 0
    model: str | None = None
    created_at: float | None = None
    tenant: str | None = None
    user: str | None = None


class MemorySection(BaseModel):
    """Memory's section of a user export: the shape of `rapport.memory.v1`'s items and summaries."""

    items: list[ExportItem] = Field(default_factory=list, max_length=100_000)
    summaries: list[ExportSummary] = Field(default_factory=list)


class UserExport(BaseModel):
    """Everything Rapport keeps of one user: one section per registered store (memory, rpm, vas, responses,
    and any store added later), each in that store's own shape."""

    format: Literal["rapport.user.v2"] = "rapport.user.v2"
    version: Literal[2] = 2
    tenant: str
    user: str
    exported_at: float
    parts: dict[str, Any]


class UserImport(BaseModel):
    """An export to import: the `rapport.user.v2` document (`parts`), or today's memory-only
    `rapport.memory.v1` document (`items`, `summaries`), which is memory's section."""

    format: Literal["rapport.memory.v1", "rapport.user.v2"] | None = None
    version: int | None = None
    items: list[ExportItem] = Field(default_factory=list, max_length=100_000)
    summaries: list[ExportSummary] = Field(default_factory=list)
    parts: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        """The document the registry imports: a v2 one with memory's section checked by its schema here."""
        if self.parts is None and self.format != "rapport.user.v2":
            return {"format": "rapport.memory.v1", **MemorySection(items=self.items, summaries=self.summaries).model_dump()}
        parts = dict(self.parts or {})
        if parts.get("memory") is not None:
            parts["memory"] = MemorySection.model_validate(parts["memory"]).model_dump()
        return {"format": "rapport.user.v2", "parts": parts}


class ImportResult(BaseModel):
    object: Literal["memory.import"] = "memory.import"
    # Memory's counts, as before the other stores had sections.
    items: int
    duplicates: int
    summaries: int
    # What each part imported, and why a part failed (the others are still imported; a part's own section
    # is written in one transaction where its store has one, so a failed one leaves nothing half-written).
    parts: dict[str, dict[str, int]] = Field(default_factory=dict)
    errors: dict[str, str] = Field(default_factory=dict)


class Forgotten(BaseModel):
    object: Literal["memory.forget"] = "memory.forget"
    tenant: str
    user: str
    removed: dict[str, Any]


class Deleted(BaseModel):
    id: str
    object: str = "memory"
    deleted: bool = True


class JobOut(BaseModel):
    object: Literal["job"] = "job"
    id: str
    kind: str
    tenant: str
    user: str
    status: str
    attempts: int
    max_attempts: int
    progress: float
    message: str | None
    error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    payload: dict[str, Any]


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    total: int
    limit: int
    offset: int
    counts: dict[str, int]
