"""Routing for /v1/responses (create, retrieve, delete)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.auth.deps import Principal, require_principal
from proxy.entrypoints.responses.protocol import ResponsesRequest
from proxy.entrypoints.responses.serving import ResponsesServing

router = APIRouter(tags=["openai"])


def _serving(request: Request) -> ResponsesServing:
    serving: ResponsesServing = request.app.state.responses_serving
    return serving


@router.post(
    "/v1/responses",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}")}},
        }
    },
)
async def create_response(request: Request, principal: Principal = Depends(require_principal)) -> Response:
    return await _serving(request).create(request, principal)


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request, principal: Principal = Depends(require_principal)) -> dict[str, Any]:
    return await _serving(request).retrieve(principal, request, response_id)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request, principal: Principal = Depends(require_principal)) -> dict[str, Any]:
    return await _serving(request).delete(principal, request, response_id)
