"""Memory items: what one stored piece of a user's history looks like, and its stable id."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any


def normalize(text: str) -> str:
    return " ".join(text.split())


def item_id(tenant: str, user: str, role: str, text: str) -> str:
    """Deterministic id: the same text from the same user and role is one item (exact-duplicate dedupe)."""
    digest = hashlib.sha256("\x00".join((tenant, user, role, normalize(text))).encode()).hexdigest()
    return digest[:32]


@dataclass(slots=True)
class MemoryItem:
    tenant: str
    user: str
    text: str
    role: str = "user"
    ts: float = field(default_factory=time.time)
    conversation_id: str | None = None
    model: str | None = None
    task: str | None = None
    source: str = "exchange"
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = item_id(self.tenant, self.user, self.role, self.text)

    def metadata(self) -> dict[str, str | float]:
        """Chroma metadata (it rejects None values, so absent fields are left out)."""
        meta: dict[str, str | float] = {
            "tenant": self.tenant,
            "user": self.user,
            "role": self.role,
            "ts": float(self.ts),
            "source": self.source,
        }
        for key in ("conversation_id", "model", "task"):
            value = getattr(self, key)
            if value is not None:
                meta[key] = str(value)
        return meta

    @classmethod
    def from_chroma(cls, item_id_: str, document: str, meta: dict[str, Any]) -> MemoryItem:
        return cls(
            id=item_id_,
            tenant=str(meta.get("tenant", "")),
            user=str(meta.get("user", "")),
            text=document,
            role=str(meta.get("role", "user")),
            ts=float(meta.get("ts", 0.0)),
            conversation_id=_opt(meta.get("conversation_id")),
            model=_opt(meta.get("model")),
            task=_opt(meta.get("task")),
            source=str(meta.get("source", "exchange")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "user": self.user,
            "text": self.text,
            "role": self.role,
            "ts": self.ts,
            "conversation_id": self.conversation_id,
            "model": self.model,
            "task": self.task,
            "source": self.source,
        }


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)
