"""Calls through litellm, for every provider it knows (Anthropic, Bedrock, Vertex, OpenAI, vLLM, ...)."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

from proxy.settings import ModelEntry
from proxy.upstream import wire
from proxy.upstream.base import UpstreamFailure
from proxy.upstream.wire import RESPONSES_PATH

# litellm fetches a cost map over the network at import unless told otherwise; this machine has no network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_litellm: Any = None


def _lib() -> Any:
    """Import litellm on first use: it is slow to import and many deployments only use the fast path."""
    global _litellm
    if _litellm is None:
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        _litellm = litellm
    return _litellm


def _failure(exc: Exception) -> UpstreamFailure:
    lib = _lib()
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, lib.exceptions.Timeout):
        return UpstreamFailure(f"upstream timed out: {message}", timeout=True)
    if isinstance(exc, lib.exceptions.APIConnectionError) and status in (None, 500):
        return UpstreamFailure(f"cannot reach upstream: {message}")
    return UpstreamFailure(message, status=int(status) if isinstance(status, int) else 502)


# The OpenAI request fields litellm may read as its own arguments. Every other client field goes to the
# upstream inside `extra_body`, exactly as the fast path sends it: litellm's other keyword arguments
# (`organization`, `headers`, `client`, `max_retries`, `callbacks`, `mock_*`, `model_list`, ...) steer
# credentials, routing, retries and logging, and a client must never be able to set those.
OPENAI_FIELDS = frozenset(
    {
        "messages", "model", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
        "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user",
        "functions", "function_call", "modalities", "prediction", "audio", "reasoning_effort", "verbosity",
        "web_search_options", "safety_identifier", "service_tier", "store", "prompt_cache_key",
        "prompt_cache_retention",
        # /v1/completions and /v1/embeddings
        "prompt", "suffix", "echo", "best_of", "input", "dimensions", "encoding_format",
    }
)  # fmt: skip


# The same rule for litellm.aresponses (/v1/responses passed through): these are its own arguments.
RESPONSES_FIELDS = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
        "max_output_tokens", "temperature", "top_p", "store", "stream", "metadata", "user", "truncation",
        "safety_identifier", "service_tier", "prompt_cache_key",
    }
)  # fmt: skip


def _kwargs(entry: ModelEntry, body: dict[str, Any], fields: frozenset[str] = OPENAI_FIELDS) -> dict[str, Any]:
    params = entry.litellm_params
    kwargs: dict[str, Any] = dict(params.model_extra or {})
    passthrough = {k: v for k, v in body.items() if k not in fields}
    kwargs.update({k: v for k, v in body.items() if k in fields})
    if passthrough:
        kwargs["extra_body"] = {**(kwargs.get("extra_body") or {}), **passthrough}
    kwargs["model"] = params.model
    kwargs["timeout"] = params.timeout
    # Retries and fallbacks are the router's job, so litellm's own are off.
    kwargs["num_retries"] = 0
    if params.api_base:
        kwargs["api_base"] = params.api_base
    key = params.resolved_api_key()
    if key:
        kwargs["api_key"] = key
    if "user" in body:
        # litellm forwards `user` only for models it knows as OpenAI's unless the param is allowed explicitly.
        allowed = list(kwargs.get("allowed_openai_params") or [])
        kwargs["allowed_openai_params"] = [*allowed, "user"]
    return kwargs


def _dump(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    dumped: dict[str, Any] = obj.model_dump(exclude_none=False)
    return dumped


def _dump_json(obj: Any) -> dict[str, Any]:
    """A Responses object or event as plain JSON values: litellm types its events' `type` as an enum, and
    its usage field holds a dict where its model declares an object (a warning per dump otherwise)."""
    if isinstance(obj, dict):
        return obj
    dumped: dict[str, Any] = obj.model_dump(mode="json", warnings=False)
    return dumped


class LiteLLMBackend:
    async def request(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        lib = _lib()
        kwargs = _kwargs(entry, body, RESPONSES_FIELDS if path == RESPONSES_PATH else OPENAI_FIELDS)
        try:
            if path == RESPONSES_PATH:
                return _dump_json(await lib.aresponses(**kwargs))
            if path == "chat/completions":
                result = await lib.acompletion(**kwargs)
            elif path == "completions":
                result = await lib.atext_completion(**kwargs)
            elif path == "embeddings":
                result = await lib.aembedding(**kwargs)
            else:
                raise UpstreamFailure(f"unsupported upstream path {path}", status=400)
        except UpstreamFailure:
            raise
        except Exception as exc:
            raise _failure(exc) from exc
        return _dump(result)

    async def stream(self, entry: ModelEntry, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        lib = _lib()
        responses = path == RESPONSES_PATH
        kwargs = _kwargs(entry, body, RESPONSES_FIELDS if responses else OPENAI_FIELDS)
        kwargs["stream"] = True
        try:
            if responses:
                response = await lib.aresponses(**kwargs)
            elif path == "chat/completions":
                response = await lib.acompletion(**kwargs)
            else:
                response = await lib.atext_completion(**kwargs)
            async for chunk in response:
                # Responses events get the fast path's checks: an error or failed event is a failure.
                yield wire.responses_event(_dump_json(chunk)) if responses else _dump(chunk)
        except UpstreamFailure:
            raise
        except Exception as exc:
            raise _failure(exc) from exc

    async def close(self) -> None:
        return None
