"""FastAPI dependencies: who is calling (tenant, key, bound user) and whether they are an admin."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from proxy.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from proxy.services import Services

OPEN_TENANT = "default"
T = TypeVar("T")
log = logging.getLogger("rapport.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant: str
    bound_user: str | None = None
    is_admin: bool = False
    rate_limit_rps: float | None = None


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <key>'.")
    # Some clients send the key as `api-key` / `x-api-key` (Azure and Anthropic styles).
    return request.headers.get("x-api-key") or request.headers.get("api-key")


async def open_mode(services: Services) -> bool:
    """No proxy key and no admin key at start: local development, bound to 127.0.0.1 only (KeyStore.open_mode)."""
    return await _key_store(services.keys.aopen_mode())


async def _key_store(call: Awaitable[T]) -> T:
    """A key-store failure answers 503: auth fails closed, never an unauthenticated pass."""
    try:
        return await call
    except Exception as exc:
        log.exception("the key store failed")
        raise ServiceUnavailable("The API key store is unavailable; try again shortly.") from exc


async def require_principal(request: Request) -> Principal:
    services = services_of(request)
    token = _bearer(request)
    if token is None:
        if await open_mode(services):
            return Principal(key_id="open", tenant=OPEN_TENANT)
        raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.")
    if services.keys.is_admin(token):
        return Principal(key_id="admin", tenant=OPEN_TENANT, is_admin=True)
    key = await _key_store(services.keys.alookup(token))
    if key is None:
        if await open_mode(services):
            # In open mode any placeholder key an SDK insists on (e.g. "sk-local") is accepted.
            return Principal(key_id="open", tenant=OPEN_TENANT)
        raise AuthenticationFailed("Incorrect API key provided.")
    return Principal(key_id=key.key_id, tenant=key.tenant, bound_user=key.user, rate_limit_rps=key.rate_limit_rps)


async def require_admin(request: Request) -> Principal:
    services = services_of(request)
    token = _bearer(request)
    if not services.keys.has_admin_key:
        if await open_mode(services):
            return Principal(key_id="open", tenant=OPEN_TENANT, is_admin=True)
        raise PermissionDenied("Admin API is disabled: no admin key is configured (auth.admin_key).")
    if token is None:
        raise AuthenticationFailed("Missing admin key: send 'Authorization: Bearer <admin key>'.")
    if services.keys.is_admin(token):
        return Principal(key_id="admin", tenant=OPEN_TENANT, is_admin=True)
    if await _key_store(services.keys.alookup(token)) is not None:
        raise PermissionDenied("This key is a proxy key; admin routes need the admin key.")
    raise AuthenticationFailed("Incorrect admin key provided.")
