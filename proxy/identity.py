"""Which end user a request is for, in a fixed order of precedence."""

from __future__ import annotations

from typing import Any

from proxy.auth.deps import Principal
from proxy.errors import InvalidRequest

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


def resolve_user(headers: Any, body: dict[str, Any], principal: Principal) -> str | None:
    """Header X-Rapport-User, body user, body safety_identifier, metadata.user_id, the key's bound user."""
    header_value = _clean(headers.get(USER_HEADER), "X-Rapport-User")
    if header_value:
        return header_value
    for param in ("user", "safety_identifier"):
        found = _clean(body.get(param), param)
        if found:
            return found
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        found = _clean(metadata.get("user_id"), "metadata.user_id")
        if found:
            return found
    return principal.bound_user
