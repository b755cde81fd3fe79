"""GET /healthz (alive), /readyz (upstreams and stores reachable), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.auth.deps import services_of
from proxy.services import Services
from proxy.settings import ModelEntry

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def probe_upstream(entry: ModelEntry, timeout: float = 3.0) -> tuple[bool, str]:
    """Reachability of an OpenAI-compatible base (GET /models); other providers are assumed reachable."""
    base = entry.litellm_params.api_base
    if not base:
        return True, "hosted provider (not probed)"
    headers = {}
    key = entry.litellm_params.resolved_api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(base.rstrip("/") + "/models", headers=headers)
    except httpx.HTTPError as exc:
        return False, f"unreachable: {exc.__class__.__name__}"
    if response.status_code >= 500:
        return False, f"HTTP {response.status_code}"
    return True, f"HTTP {response.status_code}"


async def readiness(services: Services) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}
    entries = services.settings.model_list
    results = await asyncio.gather(*(probe_upstream(e) for e in entries))
    for entry, (ok, reason) in zip(entries, results, strict=True):
        checks[f"upstream:{entry.model_name}"] = {"ok": ok, "detail": reason}
    for plugin in services.plugins:
        try:
            ok, reason = await plugin.ready()
        except Exception as exc:
            ok, reason = False, f"{exc.__class__.__name__}: {exc}"
        checks[f"plugin:{plugin.name}"] = {"ok": ok, "detail": reason}
    return all(c["ok"] for c in checks.values()), checks


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ok, checks = await readiness(services_of(request))
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(content=services_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
