"""Wire schemas of the feedback route."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from reasoning.rpm.feedback import MAX_RESPONSE_ID, Feedback


class FeedbackRequest(Feedback):
    """`{"response_id": "chatcmpl-..." or "resp_...", "user": "...", "rating": 4, "correction": "..."}`.

    `user` may also come from the `X-Rapport-User` header or a key bound to the user, as for chat.
    """

    response_id: str = Field(min_length=1, max_length=MAX_RESPONSE_ID)
    user: str | None = None


class FeedbackResponse(Feedback):
    object: Literal["rapport.feedback"] = "rapport.feedback"
    response_id: str
    user: str
    # The history entries this feedback became (RPM builds them in the background: `job_id`).
    entry_ids: list[int]
    # Entries of an earlier feedback on the same response that this one replaced.
    replaced: int
    job_id: str | None = None
