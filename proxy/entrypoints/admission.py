"""The one path that admits an OpenAI-style request, for every route that calls an upstream.

Rate limit, JSON, schema, this server's caps, the model, and the end user (a bound key's user pinned, a
conflicting one refused) are checked here in one order, so that no route can skip a check another has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel

from proxy.auth.deps import Principal
from proxy.entrypoints.common import check_caps, read_json_object, validate
from proxy.errors import InvalidRequest
from proxy.identity import resolve_user
from proxy.services import Services

T = TypeVar("T", bound=BaseModel)


@dataclass(slots=True)
class Admitted(Generic[T]):
    # The body as the upstream will receive it: `model` filled in, `user` set, Rapport's own options removed.
    body: dict[str, Any]
    request: T
    model: str
    user: str | None


async def admit(services: Services, request: Request, principal: Principal, schema: type[T]) -> Admitted[T]:
    await services.limiter.check(principal.key_id, principal.rate_limit_rps)
    body = await read_json_object(request)
    req = validate(schema, body)
    check_caps(services.settings.limits, req)
    model = getattr(req, "model", None) or services.settings.default_model
    if not model:
        raise InvalidRequest("'model' is required.", param="model")
    services.upstream.entry(model)  # 404 before any personalization work
    user = resolve_user(request.headers, body, principal)
    # Rapport's options are for Rapport; the validated copy lives on `req`.
    body.pop("rapport", None)
    body["model"] = model
    if user is not None and "user" not in body:
        # The end user still reaches the upstream (abuse monitoring, caching keys, ...). A client's own
        # `user` is kept: with a bound key it can only be the key's user (resolve_user refused any other).
        body["user"] = user
    return Admitted(body=body, request=req, model=model, user=user)
