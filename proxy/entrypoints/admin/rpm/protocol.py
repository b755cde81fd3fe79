"""Wire schemas of the RPM admin API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reasoning.rpm.models import Factor, HistoryEntry, HistoryItem, ReasoningPath, StoredFeature


class HistoryImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[HistoryItem] = Field(min_length=1, max_length=5000)
    # Queue construction right away (incremental: only the new entries are extracted).
    build: bool = True


class HistoryImportResponse(BaseModel):
    object: Literal["rpm.history.import"] = "rpm.history.import"
    tenant: str
    user: str
    imported: int
    entry_ids: list[int]
    job_id: str | None = None


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Re-extract and re-write everything (True) or only finish what is missing (False).
    full: bool = True
    mode: Literal["llm", "cheap"] | None = None


class JobRef(BaseModel):
    object: Literal["rpm.job"] = "rpm.job"
    job_id: str


class RPMSummary(BaseModel):
    object: Literal["rpm.user"] = "rpm.user"
    tenant: str
    user: str
    entries: dict[str, int]
    features: int
    factors: int
    paths: int
    build: dict[str, Any] | None = None
    jobs: list[dict[str, Any]] = Field(default_factory=list)


class EntryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[HistoryEntry]


class FeatureList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredFeature]


class FactorList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Factor]


class FactorDetail(Factor):
    features: list[StoredFeature] = Field(default_factory=list)


class PathList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ReasoningPath]


class Deleted(BaseModel):
    object: str
    id: str
    deleted: bool = True
    removed: dict[str, Any] = Field(default_factory=dict)
