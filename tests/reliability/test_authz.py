"""Authorization matrix over every route in the app's route table (issue 6 item 4; OWASP LLM02).

The admin routes are discovered at test time from the real app (with every plugin that exists), so a route
added later by any plugin is covered without editing this file. Keys are stored hashed and compared in
constant time.
"""

from __future__ import annotations

import hmac
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from proxy.app import create_app
from proxy.auth import keys as keys_module
from proxy.auth.deps import Principal, require_admin, require_principal
from proxy.auth.keys import KeyStore, hash_key
from proxy.settings import AuthSettings
from tests.conftest import ADMIN_KEY, API_KEY, API_KEY_B, rapport_settings
from tests.support.servers import ThreadedServer
from tests.support.upstream import ScriptedUpstream

# Routes anyone may call: liveness, readiness, metrics and the API description.
# /docs/assets/{name}: Swagger UI and ReDoc's own script, style sheet and icon, from a fixed map (no user data).
PUBLIC = {
    "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/docs/assets/{name}",
}


def _probe_router() -> APIRouter:
    """A minimal admin router, so the matrix is shown to hold even before any plugin ships admin routes."""
    router = APIRouter(prefix="/admin/_authz_probe", dependencies=[Depends(require_admin)])

    @router.get("/{item}")
    async def read(item: str) -> dict[str, str]:
        return {"item": item}

    @router.post("")
    async def write(body: dict[str, Any]) -> dict[str, int]:
        return {"keys": len(body)}

    return router


def _dependency_calls(route: APIRoute) -> set[Any]:
    calls: set[Any] = set()
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is not None:
            calls.add(dependant.call)
        stack.extend(dependant.dependencies)
    return calls


@pytest.fixture(scope="module")
def full_app(_scripted_session: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    settings = rapport_settings(tmp_path_factory.mktemp("authz"), _scripted_session.base_url)
    app = create_app(settings)  # every default plugin: memory, RPM, VAS, whatever exists now
    app.include_router(_probe_router())
    server = ThreadedServer(app).start()
    try:
        yield app, server.url
    finally:
        server.stop()


def routes(app: FastAPI) -> list[tuple[str, set[str], Any]]:
    """(path, methods, route) for every route the app serves, included routers flattened."""
    found = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.route if isinstance(ctx.route, APIRoute) else ctx.original_route
        found.append((ctx.path, set(ctx.methods or ()), route))
    return found


def admin_endpoints(app: FastAPI) -> list[tuple[str, str]]:
    found = []
    for path, methods, _ in routes(app):
        if path.startswith("/admin"):
            concrete = re.sub(r"\{[^}]+\}", "1", path)  # any value: auth is checked before parameters
            found.extend((method, concrete) for method in sorted(methods) if method != "HEAD")
    return found


def test_every_route_is_authenticated_and_admin_routes_need_the_admin_key(full_app):
    app, _ = full_app
    table = routes(app)
    assert any(path == "/v1/chat/completions" for path, _, _ in table)
    for path, _, route in table:
        if not isinstance(route, APIRoute):
            assert path in PUBLIC, f"unexpected non-API route {path}"
            continue
        # Strict on purpose: a guard given only at include_router() level is not visible here and fails
        # this test, so every admin router must carry `require_admin` itself.
        calls = _dependency_calls(route)
        if path.startswith("/admin"):
            assert require_admin in calls, f"{path} does not depend on require_admin"
        elif path not in PUBLIC:
            assert calls & {require_admin, require_principal}, f"{path} is not authenticated"


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        (None, 401),
        (f"Bearer {API_KEY}", 403),
        (f"Bearer {API_KEY_B}", 403),
        ("Bearer rk-not-a-key", 401),
        (f"Bearer {ADMIN_KEY}x", 401),
        (f"Bearer {ADMIN_KEY[:-1]}", 401),
        (f"Basic {ADMIN_KEY}", 401),
        ("x-api-key", 403),
    ],
)
def test_admin_matrix(full_app, authorization, expected):
    app, url = full_app
    endpoints = admin_endpoints(app)
    print(f"{len(endpoints)} admin endpoints in the route table")
    assert ("GET", "/admin/_authz_probe/1") in endpoints
    headers = {}
    if authorization == "x-api-key":
        headers["x-api-key"] = API_KEY
    elif authorization is not None:
        headers["authorization"] = authorization
    with httpx.Client(timeout=30) as client:
        for method, path in endpoints:
            response = client.request(method, f"{url}{path}", headers=headers, json={"probe": True})
            assert response.status_code == expected, (method, path, response.status_code, response.text[:300])
            error = response.json()["error"]
            assert error["type"] == ("authentication_error" if expected == 401 else "permission_error")


def test_admin_key_passes_the_gate(full_app):
    app, url = full_app
    with httpx.Client(timeout=30) as client:
        for method, path in admin_endpoints(app):
            response = client.request(
                method, f"{url}{path}", headers={"authorization": f"Bearer {ADMIN_KEY}"}, json={"probe": True}
            )
            assert response.status_code not in (401, 403), (method, path, response.text[:300])
            assert response.status_code < 500, (method, path, response.text[:300])


def test_admin_api_is_closed_when_no_admin_key_is_configured(make_rapport):
    rapport = make_rapport(auth={"admin_key": None})
    app = rapport.server._server.config.app
    app.include_router(_probe_router())
    app.openapi_schema = None
    with httpx.Client(timeout=30) as client:
        for authorization in (None, f"Bearer {API_KEY}", f"Bearer {ADMIN_KEY}"):
            headers = {"authorization": authorization} if authorization else {}
            response = client.get(f"{rapport.url}/admin/_authz_probe/1", headers=headers)
            assert response.status_code in (401, 403), authorization
            assert "error" in response.json()


def test_proxy_keys_are_stored_hashed_and_config_keys_never_on_disk(make_rapport):
    rapport = make_rapport()
    plain, key = rapport.services.keys.create("stored", tenant="tenant-c", user="u1")
    assert rapport.services.keys.lookup(plain) == key
    data_dir = Path(rapport.settings.data_dir)
    # Read every byte Rapport wrote (the SQLite files, WAL included) and look for any secret.
    blobs = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    for secret in (plain, API_KEY, API_KEY_B, ADMIN_KEY):
        assert secret.encode() not in blobs, f"a plain key is on disk: {secret[:6]}..."
    with sqlite3.connect(data_dir / "keys.sqlite3") as db:
        hashes = {row[0] for row in db.execute("SELECT key_hash FROM api_keys")}
    assert hash_key(plain) in hashes


def test_key_comparison_goes_through_constant_time_compare(tmp_path, monkeypatch):
    seen: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    store = KeyStore(tmp_path / "keys.sqlite3", AuthSettings(admin_key=ADMIN_KEY))
    try:
        assert store.is_admin(ADMIN_KEY) and not store.is_admin(ADMIN_KEY + "x")
        assert len(seen) == 2
        # What is compared are digests of equal length, never the presented secret itself.
        assert all(len(a) == len(b) == 64 and ADMIN_KEY not in (a, b) for a, b in seen)
    finally:
        store.close()


async def test_tenant_comes_only_from_the_key(make_rapport):
    rapport = make_rapport()
    # Headers or body fields naming another tenant are inert: the principal's tenant is the key's.
    for key, tenant in ((API_KEY, "tenant-a"), (API_KEY_B, "tenant-b")):
        principal: Principal = await require_principal(_FakeRequest(rapport, key))  # type: ignore[arg-type]
        assert principal.tenant == tenant and not principal.is_admin


class _FakeRequest:
    def __init__(self, rapport: Any, key: str) -> None:
        self.headers = {"authorization": f"Bearer {key}", "x-rapport-tenant": "evil", "x-tenant": "evil"}
        self.app = rapport.server._server.config.app
