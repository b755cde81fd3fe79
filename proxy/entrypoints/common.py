"""Request parsing and checks shared by the OpenAI-compatible endpoints."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from proxy.errors import InvalidRequest, RapportError
from proxy.settings import LimitSettings

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger("rapport.stream")


def sse_data(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying `obj` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def stream_error_event(exc: Exception) -> bytes:
    """The SSE error event that ends a stream which failed after its 200 went out.

    Any failure ends this way, not only Rapport's own: an exception escaping the body iterator makes the
    server drop the connection mid-chunk, which clients see as a transport error, not as an API error.
    """
    if not isinstance(exc, RapportError):
        log.error("a response stream failed inside Rapport", exc_info=exc)
        exc = RapportError("the response stream failed inside Rapport (see the server log)")
    return sse_data(exc.to_body())


async def aclose_quietly(events: Any) -> None:
    """Close an upstream event stream that may already be broken; closing it must not mask why."""
    close = getattr(events, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            pass


# Fields that would let a client pick where Rapport sends traffic or with which credentials: Rapport would
# become an open relay or an SSRF hop, so they are refused outright (OWASP LLM10 / SSRF).
FORBIDDEN_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "custom_llm_provider",
        "litellm_params",
        "aws_access_key_id",
        "aws_secret_access_key",
        "vertex_credentials",
        "azure_ad_token",
        "extra_headers",
        "mock_response",
    }
)


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("Request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Malformed JSON in request body: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", code="invalid_json")
    for name in FORBIDDEN_FIELDS.intersection(body):
        raise InvalidRequest(
            f"'{name}' cannot be set by clients: upstream routing and credentials come from Rapport's config.",
            param=name,
            code="forbidden_parameter",
        )
    return body


def loc_to_param(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("body",):
            continue
        else:
            # Pydantic names union branches by type ('str', 'list[...]'): not part of the client's path.
            if parts and isinstance(item, str) and (item in {"str", "int", "float", "bool"} or "[" in item):
                continue
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "body"


def validate(model: type[T], body: dict[str, Any]) -> T:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = loc_to_param(tuple(first["loc"]))
        raise InvalidRequest(f"Invalid value for '{param}': {first['msg']}", param=param, code="invalid_value") from exc


def check_caps(limits: LimitSettings, req: BaseModel) -> None:
    """This server's caps on message count, output tokens and `n`, for any request model that has them.

    Only fields the model declares (so validated) are read: on models that pass unknown fields through, an
    undeclared `max_completion_tokens` is whatever JSON the client sent, and goes to the upstream as is.
    """
    fields = type(req).model_fields

    def declared(name: str) -> Any:
        return getattr(req, name, None) if name in fields else None

    messages = declared("messages")
    if messages is not None and len(messages) > limits.max_messages:
        raise InvalidRequest(f"Too many messages ({len(messages)} > {limits.max_messages}).", param="messages")
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = declared(name)
        if value is not None and value > limits.max_tokens:
            raise InvalidRequest(f"'{name}' exceeds this server's cap of {limits.max_tokens}.", param=name)
    n = declared("n")
    if n is not None and n > limits.max_n:
        raise InvalidRequest(f"'n' exceeds this server's cap of {limits.max_n}.", param="n")
