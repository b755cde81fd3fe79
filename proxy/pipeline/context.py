"""Per-request state that flows through the pipeline stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class RapportOptions(BaseModel):
    """`extra_body={"rapport": {...}}`: per-request control of the personalization stages.

    Each stage validates its own section (`memory`, `rpm`, `vas`) with its own model; `False` turns a
    stage off for this call, `True` turns it on with defaults, a dict turns it on with options.
    """

    model_config = ConfigDict(extra="forbid")

    memory: bool | dict[str, Any] | None = None
    rpm: bool | dict[str, Any] | None = None
    vas: bool | dict[str, Any] | None = None
    # Task label for task-aware summaries; inferred when absent.
    task: str | None = None
    conversation_id: str | None = None
    # Do not record this exchange (memory, history) even when a user is named.
    record: bool = True


@dataclass(slots=True)
class StageReport:
    name: str
    ran: bool
    duration_ms: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    endpoint: Literal["chat", "completions", "responses"]
    model: str
    tenant: str
    user: str | None
    # The OpenAI request body as the upstream will receive it; stages rewrite it in place.
    body: dict[str, Any]
    options: RapportOptions
    stream: bool = False
    # The client's request as received (before any stage), for recording the exchange.
    original_messages: list[dict[str, Any]] = field(default_factory=list)
    reports: list[StageReport] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    # Free-form per-request scratch space shared between a stage's before() and after().
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def personalized(self) -> bool:
        return self.user is not None


@dataclass(slots=True)
class Exchange:
    """What happened: the request as the client sent it and the assistant's final answer."""

    messages: list[dict[str, Any]]
    response_text: str
    model: str
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
