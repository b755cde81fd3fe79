"""Routing for /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.auth.deps import Principal, require_principal, services_of
from proxy.entrypoints.completions.protocol import CompletionRequest
from proxy.entrypoints.completions.serving import pass_through

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/completions",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
)
async def create_completion(request: Request, principal: Principal = Depends(require_principal)) -> Response:
    return await pass_through(services_of(request), request, principal, "completions", CompletionRequest)
