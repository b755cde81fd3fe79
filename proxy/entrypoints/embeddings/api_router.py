"""Routing for /v1/embeddings (pass-through to the configured upstream)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.auth.deps import Principal, require_principal, services_of
from proxy.entrypoints.completions.serving import pass_through
from proxy.entrypoints.embeddings.protocol import EmbeddingRequest

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/embeddings",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
)
async def create_embedding(request: Request, principal: Principal = Depends(require_principal)) -> Response:
    return await pass_through(services_of(request), request, principal, "embeddings", EmbeddingRequest)
