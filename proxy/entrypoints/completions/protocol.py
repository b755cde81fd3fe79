"""Wire schema for /v1/completions (legacy text completions); unknown fields pass through."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from proxy.pipeline.context import RapportOptions


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool | None = False
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    # Validated like chat's, then reported as not applied (proxy/entrypoints/completions/report.py).
    rapport: RapportOptions | None = None
