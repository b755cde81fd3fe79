"""Memory settings (composed into Rapport's one settings object by the proxy)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MemorySettings(BaseModel):
    enabled: bool = True
    # Embedding model: a sentence-transformers name or path; None means the packaged all-MiniLM-L6-v2.
    embedding_model: str | None = None
    top_k: int = Field(default=5, ge=0, le=100)
    token_budget: int = Field(default=512, ge=0)
