"""Which end user a request is for, in a fixed order of precedence, and the pinning of bound keys."""

from __future__ import annotations

from typing import Any

from proxy.auth.deps import Principal
from proxy.errors import InvalidRequest, PermissionDenied

USER_HEADER = "x-rapport-user"
MAX_USER_ID_LENGTH = 256


def _clean(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string.", param=param)
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_USER_ID_LENGTH or any(ord(c) < 32 for c in value):
        raise InvalidRequest(
            f"'{param}' must be at most {MAX_USER_ID_LENGTH} printable characters.", param=param
        )
    return value


def named_users(headers: Any, body: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (field, user) the request names, in precedence order: header, user, safety_identifier,
    metadata.user_id. Each is validated, whether or not it ends up deciding the user."""
    found: list[tuple[str, str]] = []
    header_value = _clean(headers.get(USER_HEADER), "X-Rapport-User")
    if header_value:
        found.append(("X-Rapport-User", header_value))
    for param in ("user", "safety_identifier"):
        value = _clean(body.get(param), param)
        if value:
            found.append((param, value))
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        value = _clean(metadata.get("user_id"), "metadata.user_id")
        if value:
            found.append(("metadata.user_id", value))
    return found


def resolve_user(headers: Any, body: dict[str, Any], principal: Principal) -> str | None:
    """The end user of this request.

    A key bound to a user pins that user: the request may repeat it but never name another one, through
    any field (otherwise a key issued to alice could read and write bob's memory by sending `user="bob"`).
    An unbound key lets the first named field decide.
    """
    named = named_users(headers, body)
    bound = principal.bound_user
    if bound is not None:
        for param, value in named:
            if value != bound:
                raise PermissionDenied(
                    f"This API key is bound to one user; '{param}' names another user. Omit it or send the "
                    "key's own user.",
                    param=param,
                    code="user_mismatch",
                )
        return bound
    return named[0][1] if named else None
