"""Routing for `POST /v1/rapport/feedback`.

Under /v1 beside the OpenAI routes, with a proxy key like them: feedback comes from the chat app that got the
response, not from an operator, and `rapport` in the path says it is Rapport's own route, not OpenAI's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request

from proxy.auth.deps import Principal, require_principal
from proxy.entrypoints.feedback.protocol import FeedbackRequest, FeedbackResponse
from proxy.entrypoints.feedback.serving import FeedbackServing

if TYPE_CHECKING:
    from proxy.stages.rpm_plugin import RPMPlugin


def build_router(plugin: RPMPlugin) -> APIRouter:
    serving = FeedbackServing(plugin)
    router = APIRouter(tags=["rapport"])

    @router.post(
        "/v1/rapport/feedback",
        response_model=FeedbackResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}")}},
            }
        },
    )
    async def give_feedback(request: Request, principal: Principal = Depends(require_principal)) -> FeedbackResponse:
        return await serving.give(request, principal)

    return router
