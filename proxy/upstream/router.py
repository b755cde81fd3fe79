"""Model aliases -> deployments, with retries (backoff on 429/5xx/connection errors) and fallbacks."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from memory.llm import LLMResult
from proxy.errors import (
    InvalidRequest,
    ModelNotFound,
    RapportError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.settings import ModelEntry, RapportSettings
from proxy.upstream.aiohttp_backend import AiohttpBackend
from proxy.upstream.base import Backend, UpstreamFailure
from proxy.upstream.httpx_backend import HttpxBackend
from proxy.upstream.litellm_backend import LiteLLMBackend
from proxy.upstream.wire import RESPONSES_PATH


def to_client_error(failure: UpstreamFailure, model: str) -> RapportError:
    """What the client sees once retries and fallbacks are spent."""
    if failure.timeout:
        return UpstreamTimeout(f"Upstream for model '{model}' timed out: {failure.message}")
    if failure.status == 429:
        retry = failure.retry_after if failure.retry_after is not None else 1
        return RateLimited(
            f"Upstream for model '{model}' is rate limited: {failure.message}",
            code="upstream_rate_limited",
            headers={"Retry-After": str(max(1, int(retry)))},
        )
    if failure.status in (400, 404, 413, 422):
        # The upstream rejected the request itself (a bad parameter): that is the client's error.
        return InvalidRequest(f"Upstream rejected the request: {failure.message}", code="upstream_bad_request")
    return UpstreamError(f"Upstream for model '{model}' failed: {failure.message}")


class UpstreamRouter:
    def __init__(self, settings: RapportSettings, metrics_observe: Any = None) -> None:
        self._settings = settings
        self._fast: Backend = AiohttpBackend() if settings.upstream.transport == "aiohttp" else HttpxBackend()
        self._litellm = LiteLLMBackend()
        self.observe = metrics_observe

    # -- routing -------------------------------------------------------------------------------

    def entry(self, model: str) -> ModelEntry:
        entry = self._settings.model(model)
        if entry is None:
            raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        return entry

    def chain(self, model: str, path: str = "chat/completions") -> list[ModelEntry]:
        first = self.entry(model)
        seen = {first.model_name}
        chain = [first]
        for name in first.fallbacks:
            if name not in seen:
                seen.add(name)
                chain.append(self.entry(name))
        if path == RESPONSES_PATH:
            # A Responses request can only fall back to deployments that speak Responses themselves.
            chain = [entry for entry in chain if entry.responses == "passthrough"]
        return chain

    def backend(self, entry: ModelEntry) -> Backend:
        if self._settings.upstream.fast_path and entry.is_openai_compatible():
            return self._fast
        return self._litellm

    def _delay(self, attempt: int, failure: UpstreamFailure) -> float:
        cfg = self._settings.upstream
        delay = min(cfg.backoff_max_s, cfg.backoff_base_s * (2**attempt))
        if failure.retry_after is not None:
            delay = min(cfg.backoff_max_s, max(delay, failure.retry_after))
        return delay * (0.5 + random.random() / 2)

    def _record(self, entry: ModelEntry, started: float) -> None:
        if self.observe is not None:
            self.observe(entry.model_name, time.perf_counter() - started)

    # -- calls ---------------------------------------------------------------------------------

    async def request(self, model: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: UpstreamFailure | None = None
        for entry in self.chain(model, path):
            backend = self.backend(entry)
            for attempt in range(self._settings.upstream.retries + 1):
                started = time.perf_counter()
                try:
                    result = await backend.request(entry, path, body)
                    self._record(entry, started)
                    return result
                except UpstreamFailure as failure:
                    last = failure
                    if not failure.retriable or attempt == self._settings.upstream.retries:
                        break
                    await asyncio.sleep(self._delay(attempt, failure))
            if last is not None and not (last.retriable or last.timeout):
                break  # a bad request fails the same way on every fallback
        assert last is not None
        raise to_client_error(last, model)

    async def stream(self, model: str, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Retries and fallbacks apply only before the first event: after it, a failure ends the stream."""
        last: UpstreamFailure | None = None
        for entry in self.chain(model, path):
            backend = self.backend(entry)
            for attempt in range(self._settings.upstream.retries + 1):
                started = time.perf_counter()
                events = backend.stream(entry, path, body)
                try:
                    first = await events.__anext__()
                except StopAsyncIteration:
                    return
                except UpstreamFailure as failure:
                    last = failure
                    await events.aclose()
                    if not failure.retriable or attempt == self._settings.upstream.retries:
                        break
                    await asyncio.sleep(self._delay(attempt, failure))
                    continue
                try:
                    yield first
                    async for event in events:
                        yield event
                    self._record(entry, started)
                except UpstreamFailure as failure:
                    raise to_client_error(failure, model) from failure
                finally:
                    await events.aclose()
                return
            if last is not None and not (last.retriable or last.timeout):
                break
        assert last is not None
        raise to_client_error(last, model)

    async def chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request(model, "chat/completions", body)

    def chat_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self.stream(model, "chat/completions", body)

    def passes_responses_through(self, model: str) -> bool:
        """Whether /v1/responses for this model goes to the upstream's own /v1/responses (not the bridge)."""
        return self.entry(model).responses == "passthrough"

    async def responses(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request(model, RESPONSES_PATH, body)

    def responses_stream(self, model: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self.stream(model, RESPONSES_PATH, body)

    def as_chat_llm(self, model: str) -> RouterChatLLM:
        return RouterChatLLM(self, model)

    async def close(self) -> None:
        await self._fast.close()
        await self._litellm.close()


class RouterChatLLM:
    """memory.llm.ChatLLM over the router: what summaries and extraction call."""

    def __init__(self, router: UpstreamRouter, model: str) -> None:
        self._router = router
        self.model = model

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        body = {"messages": messages, **options}
        result = await self._router.chat(self.model, body)
        choice = (result.get("choices") or [{}])[0]
        text = ((choice.get("message") or {}).get("content")) or ""
        usage = result.get("usage") or {}
        return LLMResult(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            raw=result,
        )


class BoundUpstream:
    """The `Upstream` a generating stage gets: the router bound to one request's model."""

    def __init__(self, router: UpstreamRouter, model: str) -> None:
        self._router = router
        self._model = model

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._router.chat(self._model, body)

    def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        return self._router.chat_stream(self._model, body)
