"""The one small interface every personalization stage implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from proxy.pipeline.context import Exchange, RequestContext


@runtime_checkable
class Stage(Protocol):
    """A pipeline stage.

    `before` rewrites `ctx.body` for this user before the upstream call and may add to `ctx.reports`
    through the runner; `after` learns from the finished exchange and runs off the request path (the
    response and the stream's end never wait for it).
    """

    name: str
    # The model of the stage's `rapport.<stage>` options, and whether it is on when neither the request nor
    # the model says: the pipeline resolves both into `ctx.stage_options[name]` (proxy/pipeline/options.py).
    options_model: type[BaseModel]
    default_on: bool

    def wants(self, ctx: RequestContext) -> bool:
        """Whether the stage runs for this request (user named, `ctx.stage_on(name)`, stage conditions)."""
        ...

    async def before(self, ctx: RequestContext) -> dict[str, Any]:
        """Rewrite the request; return details for the response's `rapport` extension."""
        ...

    async def after(self, ctx: RequestContext, exchange: Exchange) -> None: ...


class Upstream(Protocol):
    """What a generating stage may call: the configured upstream for this request's model."""

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


@runtime_checkable
class GeneratingStage(Stage, Protocol):
    """A stage that takes over decoding itself (VAS): it calls the upstream step by step."""

    def generates(self, ctx: RequestContext) -> bool: ...

    async def generate(self, ctx: RequestContext, upstream: Upstream) -> dict[str, Any]:
        """Return a complete OpenAI chat.completion object."""
        ...

    def generate_stream(self, ctx: RequestContext, upstream: Upstream) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI chat.completion.chunk objects as tokens are chosen."""
        ...


class TextFilter(Protocol):
    """Rewrites the streamed content deltas of one choice (e.g. to keep reasoning out of the answer);
    `flush` returns what it still holds when that choice finishes."""

    def feed(self, delta: str) -> str: ...

    def flush(self) -> str: ...


@runtime_checkable
class AnswerRewritingStage(Stage, Protocol):
    """A stage that also rewrites the upstream's answer before the client sees it (RPM hides reasoning)."""

    def finalize_text(self, ctx: RequestContext, text: str) -> str: ...

    def stream_filter(self, ctx: RequestContext) -> TextFilter | None: ...
