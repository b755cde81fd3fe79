"""The logic of `POST /v1/rapport/feedback`: admit, find the response for this tenant and user, write history.

A response is found only under the tenant and user that got it: any other asks for an id that, for them, does
not exist (404, as for stored responses). The user is resolved as for chat (proxy/identity.py), so a key bound
to one user cannot give feedback as another (403).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

from proxy.auth.deps import Principal
from proxy.entrypoints.common import read_json_object, validate
from proxy.entrypoints.feedback.protocol import FeedbackRequest, FeedbackResponse
from proxy.errors import InvalidRequest, NotFound
from proxy.identity import resolve_user
from reasoning.rpm.feedback import Feedback, FeedbackError

if TYPE_CHECKING:
    from proxy.stages.rpm_plugin import RPMPlugin


class FeedbackServing:
    def __init__(self, plugin: RPMPlugin) -> None:
        self.plugin = plugin
        self.services = plugin.services

    async def give(self, request: Request, principal: Principal) -> FeedbackResponse:
        await self.services.limiter.check(principal.key_id, principal.rate_limit_rps)
        body = await read_json_object(request)
        req = validate(FeedbackRequest, body)
        user = resolve_user(request.headers, body, principal)
        if user is None:
            raise InvalidRequest("'user' is required: feedback belongs to the user who got the response.", param="user")
        feedback = Feedback(rating=req.rating, choice=req.choice, correction=req.correction)
        try:
            result = await self.plugin.feedback.give(principal.tenant, user, req.response_id, feedback)
        except FeedbackError as exc:
            raise InvalidRequest(str(exc), param=exc.param) from exc
        if result is None:
            raise NotFound(f"No response with id '{req.response_id}' found for this user.", param="response_id")
        # Incremental: only the new entries are extracted, and the factors are re-derived with them.
        job_id = await self.plugin.schedule(principal.tenant, user)
        return FeedbackResponse(
            response_id=result.response_id, user=user, entry_ids=result.entry_ids, replaced=result.replaced,
            job_id=job_id, **feedback.model_dump(),
        )
