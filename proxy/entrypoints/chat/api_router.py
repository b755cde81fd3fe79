"""Routing for /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.auth.deps import Principal, require_principal
from proxy.entrypoints.chat.protocol import ChatCompletionRequest
from proxy.entrypoints.chat.serving import ChatServing

router = APIRouter(tags=["openai"])


@router.post(
    "/v1/chat/completions",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}},
        }
    },
)
async def create_chat_completion(request: Request, principal: Principal = Depends(require_principal)) -> Response:
    serving: ChatServing = request.app.state.chat_serving
    return await serving.create(request, principal)
