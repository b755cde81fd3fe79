"""The asynchronous client (generated from the synchronous one by rapport/_sync.py's shape; keep in step)."""

from __future__ import annotations

import asyncio
import builtins
import time
from typing import TYPE_CHECKING, Any

import httpx

from rapport import _base as b
from rapport.types import (
    FeedbackResult,
    Forgotten,
    ImportResult,
    Job,
    JobList,
    Memory,
    MemoryList,
    Summary,
    UserList,
    UserProfile,
)

if TYPE_CHECKING:
    import openai


class _AsyncNamespace:
    def __init__(self, client: AsyncRapport) -> None:
        self._client = client

    async def _run(self, call: b.Call) -> Any:
        return await self._client._request(call)

    def _tenant(self, tenant: str | None) -> str:
        return tenant or self._client.tenant


class AsyncUsers(_AsyncNamespace):
    async def list(self, *, tenant: str | None = None, limit: int = 50, offset: int = 0) -> UserList:
        return UserList.model_validate(await self._run(b.users_list(tenant, limit, offset)))

    async def get(self, user: str, *, tenant: str | None = None) -> UserProfile:
        return UserProfile.model_validate(await self._run(b.users_get(user, self._tenant(tenant))))

    async def forget(self, user: str, *, tenant: str | None = None) -> Forgotten:
        return Forgotten.model_validate(await self._run(b.users_forget(user, self._tenant(tenant))))

    async def export(self, user: str, *, tenant: str | None = None) -> dict[str, Any]:
        """Everything Rapport keeps of the user: `{"format": "rapport.user.v2", "parts": {store: section}}`
        (memory, rpm, vas, responses, ...); `import_` takes it back, as it takes the older memory-only document."""
        data: dict[str, Any] = await self._run(b.users_export(user, self._tenant(tenant)))
        return data

    async def import_(self, user: str, data: dict[str, Any], *, tenant: str | None = None) -> ImportResult:
        return ImportResult.model_validate(await self._run(b.users_import(user, data, self._tenant(tenant))))


class AsyncMemories(_AsyncNamespace):
    async def list(
        self, user: str, *, tenant: str | None = None, limit: int = 50, offset: int = 0, **filters: Any
    ) -> MemoryList:
        return MemoryList.model_validate(
            await self._run(b.memories_list(user, self._tenant(tenant), None, limit, offset, **filters))
        )

    async def search(
        self, user: str, q: str, *, tenant: str | None = None, limit: int = 10, **filters: Any
    ) -> builtins.list[Memory]:
        found = MemoryList.model_validate(
            await self._run(b.memories_list(user, self._tenant(tenant), q, limit, 0, **filters))
        )
        return found.data

    async def add(
        self,
        user: str,
        text: str,
        *,
        tenant: str | None = None,
        role: str = "user",
        conversation_id: str | None = None,
        task: str | None = None,
        ts: float | None = None,
    ) -> Memory:
        body = {"text": text, "role": role, "conversation_id": conversation_id, "task": task, "ts": ts}
        return Memory.model_validate(await self._run(b.memories_add(user, self._tenant(tenant), body)))

    async def get(self, user: str, memory_id: str, *, tenant: str | None = None) -> Memory:
        return Memory.model_validate(await self._run(b.memories_get(user, memory_id, self._tenant(tenant))))

    async def update(
        self,
        user: str,
        memory_id: str,
        *,
        tenant: str | None = None,
        text: str | None = None,
        role: str | None = None,
        conversation_id: str | None = None,
        task: str | None = None,
    ) -> Memory:
        body = {"text": text, "role": role, "conversation_id": conversation_id, "task": task}
        return Memory.model_validate(
            await self._run(b.memories_update(user, memory_id, self._tenant(tenant), body))
        )

    async def delete(self, user: str, memory_id: str, *, tenant: str | None = None) -> bool:
        return bool((await self._run(b.memories_delete(user, memory_id, self._tenant(tenant))))["deleted"])


class AsyncSummaries(_AsyncNamespace):
    async def list(
        self, user: str, *, tenant: str | None = None, task: str | None = None
    ) -> builtins.list[Summary]:
        data = (await self._run(b.summaries_list(user, self._tenant(tenant), task)))["data"]
        return [Summary.model_validate(s) for s in data]

    async def regenerate(
        self, user: str, *, tenant: str | None = None, task: str | None = None
    ) -> builtins.list[str]:
        return list((await self._run(b.summaries_regenerate(user, self._tenant(tenant), task)))["job_ids"])


class AsyncJobs(_AsyncNamespace):
    async def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JobList:
        return JobList.model_validate(await self._run(b.jobs_list(status, kind, tenant, user, limit, offset)))

    async def get(self, job_id: str) -> Job:
        return Job.model_validate(await self._run(b.jobs_get(job_id)))

    async def wait(self, job_id: str, *, timeout: float = 120.0, interval: float = 0.2) -> Job:
        """Poll until the job succeeded or failed (raises TimeoutError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status}")
            await asyncio.sleep(interval)


class AsyncReasoning(_AsyncNamespace):
    """RPM: import labelled history, inspect features, factors (with statistics) and reasoning paths."""

    async def import_history(
        self, user: str, items: builtins.list[dict[str, Any]], *, tenant: str | None = None, build: bool = True
    ) -> dict[str, Any]:
        body = {"items": items, "build": build}
        result: dict[str, Any] = await self._run(b.rpm_call("POST", user, self._tenant(tenant), "history", body))
        return result

    async def get(self, user: str, what: str = "rpm", *, tenant: str | None = None) -> dict[str, Any]:
        """`what`: rpm (summary), rpm/history, rpm/features, rpm/factors, rpm/factors/ID, rpm/paths, rpm/paths/ID."""
        result: dict[str, Any] = await self._run(b.rpm_call("GET", user, self._tenant(tenant), what))
        return result

    async def rebuild(self, user: str, *, tenant: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(b.rpm_call("POST", user, self._tenant(tenant), "rpm/rebuild"))
        return result

    async def delete(self, user: str, what: str = "rpm", *, tenant: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(b.rpm_call("DELETE", user, self._tenant(tenant), what))
        return result


class AsyncValues(_AsyncNamespace):
    """VAS: the configured value models and each user's weights and beta."""

    async def models(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(b.vas_call("GET", "value-models"))
        return result

    async def get(self, user: str, *, tenant: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(b.vas_call("GET", f"users/{b.seg(user)}", self._tenant(tenant)))
        return result

    async def set(
        self, user: str, weights: dict[str, float], *, beta: float | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        body = {"weights": weights, "beta": beta}
        result: dict[str, Any] = await self._run(b.vas_call("PUT", f"users/{b.seg(user)}", self._tenant(tenant), body))
        return result

    async def delete(self, user: str, *, tenant: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._run(b.vas_call("DELETE", f"users/{b.seg(user)}", self._tenant(tenant)))
        return result


class AsyncRapport:
    """Client for a Rapport server: `.openai(user=...)` for chat, typed admin namespaces for memory.

    `api_key` is a proxy key (for `.openai`), `admin_key` the admin key (for the namespaces).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        admin_key: str | None = None,
        *,
        tenant: str = "default",
        timeout: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = b.root_url(base_url)
        self.api_key = api_key
        self.admin_key = admin_key
        self.tenant = tenant
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self._http = http_client or httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout
        )
        self.users = AsyncUsers(self)
        self.memories = AsyncMemories(self)
        self.summaries = AsyncSummaries(self)
        self.jobs = AsyncJobs(self)
        self.rpm = AsyncReasoning(self)
        self.vas = AsyncValues(self)

    def openai(self, user: str, **kwargs: Any) -> openai.AsyncOpenAI:
        """An `openai.AsyncOpenAI` pointed at Rapport and bound to `user` (every request names them)."""
        import openai

        headers = {**kwargs.pop("default_headers", {}), b.USER_HEADER: user}
        return openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1",
            api_key=self.api_key or "sk-local",
            default_headers=headers,
            **kwargs,
        )

    async def feedback(
        self,
        response_id: str,
        *,
        user: str | None = None,
        rating: float | None = None,
        choice: str | None = None,
        correction: str | None = None,
    ) -> FeedbackResult:
        """Feed the user's judgement of a response back: a `rating` (a number), a `choice` (the option they
        picked) or a `correction` (the answer they wanted); a rating may come with either of the others.

        `response_id` is the id the user's chat completion (`chatcmpl-...`) or response (`resp_...`) came with,
        for a request RPM ran on; `user` is that request's user (omit it with a key bound to the user). It
        becomes RPM history for the user; a second feedback on the same response replaces the first.
        """
        call = b.feedback(response_id, self.api_key, user=user, rating=rating, choice=choice, correction=correction)
        return FeedbackResult.model_validate(await self._request(call))

    async def _request(self, call: b.Call) -> Any:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.clean_params(), json=call.json, headers=call.headers or None
            )
        except httpx.HTTPError as exc:
            raise b.RapportError(f"cannot reach Rapport at {self.base_url}: {exc}") from exc
        return b.raise_for(response)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRapport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
