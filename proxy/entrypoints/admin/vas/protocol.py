"""Wire schemas of the VAS admin API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VASProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(description="Value-model name -> weight (0 drops it).")
    beta: float | None = Field(default=None, ge=0.0, le=1000.0, description="The user's default beta.")


class VASProfile(BaseModel):
    tenant: str
    user: str
    weights: dict[str, float]
    beta: float | None = None
    updated_at: float | None = None


class ValueModelInfo(BaseModel):
    name: str
    backend: str
    loaded: bool
    error: str | None = None


class ValueModelList(BaseModel):
    data: list[ValueModelInfo]


class Deleted(BaseModel):
    tenant: str
    user: str
    deleted: bool
