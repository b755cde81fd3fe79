"""What a request asks of memory (`MemoryOptions`) and what retrieval gave it (`Retrieval`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memory.catalog import Summary
from memory.items import MemoryItem


class MemoryOptions(BaseModel):
    """Per-request memory options (`extra_body={"rapport": {"memory": {...}}}`)."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(default=None, ge=0, le=100)
    budget: int | None = Field(default=None, ge=0, le=100_000)
    summary: bool = True
    task: str | None = Field(default=None, min_length=1, max_length=64)
    store: bool = True
    # Hybrid (BM25 + dense) retrieval and conversation neighbours; None: the server's setting.
    lexical: bool | None = None
    neighbours: bool | None = None
    # How lexical matches are ranked where the index offers a choice (PostgreSQL: bm25 or ts_rank_cd; the
    # embedded FTS5 index ranks by bm25 only); None: the index's default. Reported as `lexical_rank`.
    lexical_rank: Literal["bm25", "ts_rank_cd"] | None = None


@dataclass(slots=True)
class Retrieval:
    task: str
    items: list[MemoryItem] = field(default_factory=list)
    summary: Summary | None = None
    block: str = ""
    tokens: int = 0
    candidates: int = 0
    ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    # Why a part was left out: similarity retrieval (no query text), the summary (over the budget).
    skipped: str | None = None
    summary_skipped: str | None = None
    # Hybrid retrieval: whether the lexical index was asked, and how many candidates it matched.
    lexical: bool = False
    lexical_matches: int = 0
    lexical_rank: str | None = None
    # Conversation neighbours of the retrieved items that made it into the block (not counted in `items`).
    neighbours: list[MemoryItem] = field(default_factory=list)
    # The user's forget generation when the request started: its recording writes nothing if a forget came
    # in between (memory/generations.py). Not part of `details`.
    generation: int | None = None

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task,
            "items": len(self.items),
            "item_ids": [it.id for it in self.items],
            "summary_version": self.summary.version if self.summary else None,
            "tokens_added": self.tokens,
            "candidates": self.candidates,
            "ms": round(self.ms, 3),
            "embed_ms": round(self.embed_ms, 3),
            "search_ms": round(self.search_ms, 3),
            "lexical": self.lexical,
            "lexical_matches": self.lexical_matches,
            "lexical_rank": self.lexical_rank,
            "neighbours": len(self.neighbours),
            "neighbour_ids": [it.id for it in self.neighbours],
        }
        if self.skipped:
            out["skipped"] = self.skipped
        if self.summary_skipped:
            out["summary_skipped"] = self.summary_skipped
        return out
