"""Per-request state that flows through the pipeline stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class RapportOptions(BaseModel):
    """`extra_body={"rapport": {...}}`: per-request control of the personalization stages.

    A stage's section (`memory`, `rpm`, `vas`): `False` turns the stage off for this call, `True` turns it
    on, a dict turns it on with those options, absent leaves it to the model's and the stage's defaults.
    The sections are resolved against those defaults and validated in one place (proxy/pipeline/options.py).
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


@dataclass(frozen=True, slots=True)
class StageOptions:
    """One stage's resolved setting for one request (proxy/pipeline/options.py): on or off, and its options."""

    on: bool
    options: BaseModel
    # The layer that turned the stage on or off: "request", "model" or "default".
    decided_by: Literal["request", "model", "default"]


@dataclass(slots=True)
class StageReport:
    name: str
    ran: bool
    duration_ms: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    # Only these run the pipeline: /v1/completions is a pass-through (a raw prompt has no messages to personalize).
    endpoint: Literal["chat", "responses"]
    model: str
    tenant: str
    user: str | None
    # The OpenAI request body as the upstream will receive it; stages rewrite it in place.
    body: dict[str, Any]
    options: RapportOptions
    stream: bool = False
    # The client's request as received (before any stage), for recording the exchange.
    original_messages: list[dict[str, Any]] = field(default_factory=list)
    # Each stage's resolved setting by stage name, filled in by the pipeline before any stage runs.
    stage_options: dict[str, StageOptions] = field(default_factory=dict)
    reports: list[StageReport] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    # Free-form per-request scratch space shared between a stage's before() and after().
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def personalized(self) -> bool:
        return self.user is not None

    def stage_on(self, name: str) -> bool:
        resolved = self.stage_options.get(name)
        return resolved is not None and resolved.on


@dataclass(slots=True)
class Exchange:
    """What happened: the request as the client sent it and the assistant's final answer."""

    messages: list[dict[str, Any]]
    response_text: str
    model: str
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    # The id the client got (`chatcmpl-...`, `resp_...`): what a feedback on this answer refers to.
    response_id: str | None = None
