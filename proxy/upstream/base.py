"""The backend interface and the one failure type that the router's retry and fallback logic reads."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from proxy.settings import ModelEntry

RETRIABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class UpstreamFailure(Exception):
    """A failed upstream call. `status` is None for connection failures and timeouts."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        timeout: bool = False,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.timeout = timeout
        self.retry_after = retry_after
        self.body = body

    @property
    def retriable(self) -> bool:
        if self.timeout:
            return False
        return self.status is None or self.status in RETRIABLE_STATUS


class Backend(Protocol):
    async def request(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a non-streaming request (path: chat/completions, completions, embeddings, responses)."""
        ...

    def stream(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """POST a streaming request and yield each SSE data object."""
        ...

    async def close(self) -> None: ...


def upstream_model_name(entry: ModelEntry) -> str:
    """`openai/smollm2` -> `smollm2`: the model name the OpenAI-compatible server itself expects."""
    model = entry.litellm_params.model
    provider, sep, rest = model.partition("/")
    return rest if sep and provider in {"openai", "hosted_vllm", "llamacpp"} else model
