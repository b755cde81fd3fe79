"""Request building shared by the sync and async clients: paths, params, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

USER_HEADER = "X-Rapport-User"


class RapportError(Exception):
    """An error answer from Rapport (`{"error": {message, type, param, code}}`) or a transport failure."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code


class NotFoundError(RapportError):
    pass


@dataclass(slots=True)
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    # Per call, over the client's own (the feedback route takes the proxy key, not the admin key).
    headers: dict[str, str] = field(default_factory=dict)

    def clean_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if v is not None}


def root_url(base_url: str) -> str:
    """Accept the server root or its OpenAI base (`.../v1`)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def seg(value: str) -> str:
    return quote(value, safe="")


def raise_for(response: httpx.Response) -> Any:
    if response.status_code < 400:
        return response.json()
    try:
        err = response.json().get("error") or {}
    except ValueError:
        err = {}
    message = err.get("message") or response.text[:500] or f"HTTP {response.status_code}"
    cls = NotFoundError if response.status_code == 404 else RapportError
    raise cls(
        message,
        status=response.status_code,
        type=err.get("type"),
        param=err.get("param"),
        code=err.get("code"),
    )


# -- the admin calls, one builder each ------------------------------------------------------------------


def users_list(tenant: str | None, limit: int, offset: int) -> Call:
    return Call("GET", "/admin/users", {"tenant": tenant, "limit": limit, "offset": offset})


def users_get(user: str, tenant: str) -> Call:
    return Call("GET", f"/admin/users/{seg(user)}", {"tenant": tenant})


def users_forget(user: str, tenant: str) -> Call:
    return Call("DELETE", f"/admin/users/{seg(user)}", {"tenant": tenant})


def users_export(user: str, tenant: str) -> Call:
    return Call("GET", f"/admin/users/{seg(user)}/export", {"tenant": tenant})


def users_import(user: str, data: dict[str, Any], tenant: str) -> Call:
    # A `rapport.user.v2` export (a section per store) goes as it is; a memory-only one as its items and summaries.
    if "parts" in data:
        body = {"format": data.get("format", "rapport.user.v2"), "parts": data["parts"]}
    else:
        body = {"items": data.get("items", []), "summaries": data.get("summaries", [])}
    return Call("POST", f"/admin/users/{seg(user)}/import", {"tenant": tenant}, body)


def memories_list(user: str, tenant: str, q: str | None, limit: int, offset: int, **filters: Any) -> Call:
    return Call(
        "GET",
        f"/admin/users/{seg(user)}/memories",
        {"tenant": tenant, "q": q, "limit": limit, "offset": offset, **filters},
    )


def memories_add(user: str, tenant: str, body: dict[str, Any]) -> Call:
    return Call(
        "POST",
        f"/admin/users/{seg(user)}/memories",
        {"tenant": tenant},
        {k: v for k, v in body.items() if v is not None},
    )


def memories_get(user: str, memory_id: str, tenant: str) -> Call:
    return Call("GET", f"/admin/users/{seg(user)}/memories/{seg(memory_id)}", {"tenant": tenant})


def memories_update(user: str, memory_id: str, tenant: str, body: dict[str, Any]) -> Call:
    return Call(
        "PATCH",
        f"/admin/users/{seg(user)}/memories/{seg(memory_id)}",
        {"tenant": tenant},
        {k: v for k, v in body.items() if v is not None},
    )


def memories_delete(user: str, memory_id: str, tenant: str) -> Call:
    return Call("DELETE", f"/admin/users/{seg(user)}/memories/{seg(memory_id)}", {"tenant": tenant})


def summaries_list(user: str, tenant: str, task: str | None) -> Call:
    return Call("GET", f"/admin/users/{seg(user)}/summaries", {"tenant": tenant, "task": task})


def summaries_regenerate(user: str, tenant: str, task: str | None) -> Call:
    return Call("POST", f"/admin/users/{seg(user)}/summaries/regenerate", {"tenant": tenant}, {"task": task})


def jobs_list(
    status: str | None, kind: str | None, tenant: str | None, user: str | None, limit: int, offset: int
) -> Call:
    return Call(
        "GET",
        "/admin/jobs",
        {"status": status, "kind": kind, "tenant": tenant, "user": user, "limit": limit, "offset": offset},
    )


def jobs_get(job_id: str) -> Call:
    return Call("GET", f"/admin/jobs/{seg(job_id)}")


def rpm_call(method: str, user: str, tenant: str, sub: str = "rpm", json: Any = None) -> Call:
    """RPM admin routes live under /admin/users/{user}/ (history import, features, factors, paths)."""
    return Call(method, f"/admin/users/{seg(user)}/{sub}", {"tenant": tenant}, json)


def vas_call(method: str, sub: str, tenant: str | None = None, json: Any = None) -> Call:
    return Call(method, f"/admin/vas/{sub}", {"tenant": tenant}, json)


# -- the proxy-key calls ----------------------------------------------------------------------------------------


def feedback(
    response_id: str,
    api_key: str | None,
    *,
    user: str | None,
    rating: float | None,
    choice: str | None,
    correction: str | None,
) -> Call:
    """`POST /v1/rapport/feedback` with the proxy key (without one, the client's own auth: open mode)."""
    body = {"response_id": response_id, "user": user, "rating": rating, "choice": choice, "correction": correction}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return Call("POST", "/v1/rapport/feedback", json={k: v for k, v in body.items() if v is not None}, headers=headers)
