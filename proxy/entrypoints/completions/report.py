"""What a /v1/completions response tells a named user about personalization: that none was applied.

Why /v1/completions stays a pass-through: its prompt is raw text, often already put through a chat template
by the client, with no messages to put a system block into, no user turn to retrieve for and no answer
format to steer; splicing text into it would silently change what the model is asked. So no stage runs and
nothing is recorded, and instead of dropping the request's `rapport` options without a word, the response
lists every stage that would have been on for this model and request (resolved like chat's) with
`applied: false` and the reason, in the same `rapport` extension and headers that chat uses.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from proxy.pipeline.context import RapportOptions
from proxy.pipeline.options import resolver_of
from proxy.services import Services

NOT_APPLIED = (
    "not applied: /v1/completions is passed through unchanged (a raw prompt has no messages to personalize); "
    "use /v1/chat/completions or /v1/responses"
)


@dataclass(frozen=True, slots=True)
class PassThroughReport:
    extension: dict[str, Any]
    headers: dict[str, str]


def completions_report(
    services: Services, model: str, user: str | None, options: RapportOptions | None
) -> PassThroughReport | None:
    """The report for a named user (None without one); a bad `rapport.<stage>` option is a 400 either way."""
    resolved = resolver_of(services).resolve(model, options or RapportOptions())
    if user is None:
        return None
    request_id = "rq-" + secrets.token_hex(8)
    stages = [
        {"name": name, "ran": False, "duration_ms": 0.0, "detail": {"applied": False, "reason": NOT_APPLIED}}
        for name, setting in resolved.items()
        if setting.on
    ]
    extension = {"request_id": request_id, "user": user, "stages": stages, "degraded": [], "overhead_ms": 0.0}
    return PassThroughReport(extension, {"x-rapport-request-id": request_id, "x-rapport-stages": "none"})
