"""Feedback on a response, through a real Rapport (RPM on, scripted upstream, the real embedding model):
`POST /v1/rapport/feedback` turns the user's correction, choice or rating of a chat completion or a
/v1/responses response into RPM history, which then shapes what RPM injects for a later similar query.
Only the tenant and user that got the response may give it; a second feedback replaces the first;
the user's forget removes it; bad input answers OpenAI-style errors naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from rapport import AsyncRapport, Rapport
from rapport._base import NotFoundError, RapportError
from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply, completion

TENANT = "tenant-a"  # the tenant of the test API key
RPM_ONLY = ("proxy.stages.rpm_plugin:build",)
# Cheap construction and request-time extraction: no utility-LLM calls, so the script holds only the chat answers.
RPM_ON = {"enabled_by_default": True, "construction_mode": "cheap", "request_mode": "cheap"}
QUERY = "Suggest a restaurant for dinner with my family tonight."
LATER = "Suggest a restaurant for dinner with my family on Friday."


@pytest.fixture()
def rapport(make_rapport: Any) -> Any:
    return make_rapport(plugins=RPM_ONLY, rpm=RPM_ON)


def feedback_book(h: Any) -> Any:
    plugin = next(p for p in h.services.plugins if p.name == "rpm")
    return plugin.feedback


def remembered(h: Any, user: str, response_id: str, tenant: str = TENANT) -> Any:
    """Wait until the response is remembered (the recording runs after the answer, off the request path)."""
    store = feedback_book(h).store
    return wait_until(lambda: store.issued(tenant, user, response_id), within=30)


def post_feedback(h: Any, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{h.base_url}/rapport/feedback", json=body, timeout=30,
        headers={"Authorization": f"Bearer {key or h.api_key}", **headers},
    )


def built(h: Any, user: str) -> dict[str, Any]:
    """The user's RPM summary once every history entry is built."""
    with admin(h) as client:
        def done() -> dict[str, Any] | None:
            summary = client.get(f"/admin/users/{user}/rpm?tenant={TENANT}").json()
            entries = summary["entries"]
            return summary if entries and set(entries) <= {"done", "skipped"} else None

        return wait_until(done, within=60)  # type: ignore[no-any-return]


def history(h: Any, user: str) -> list[dict[str, Any]]:
    with admin(h) as client:
        return client.get(f"/admin/users/{user}/rpm/history?tenant={TENANT}").json()["data"]  # type: ignore[no-any-return]


def chat(h: Any, upstream: Any, text: str, response_id: str, answer: str, user: str = "alice") -> Any:
    upstream.script(Reply(body={**completion(answer, "scripted"), "id": response_id}))
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key, max_retries=0)
    return client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": text}], user=user)


def system_of(upstream: Any) -> str:
    messages = upstream.requests[-1].json["messages"]
    return str(messages[0]["content"]) if messages[0]["role"] == "system" else ""


def test_a_correction_becomes_history_and_changes_what_rpm_injects(rapport: Any, scripted_upstream: Any) -> None:
    first = chat(rapport, scripted_upstream, QUERY, "chatcmpl-dinner-1", "Try Steak House.")
    assert first.id == "chatcmpl-dinner-1"
    assert system_of(scripted_upstream) == "", "no history yet: RPM injects nothing"
    remembered(rapport, "alice", first.id)

    r = post_feedback(rapport, {"response_id": first.id, "user": "alice", "correction": "Green Leaf, the vegan place."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "rapport.feedback" and body["replaced"] == 0 and len(body["entry_ids"]) == 1
    assert body["job_id"] and body["correction"] == "Green Leaf, the vegan place."
    [entry] = history(rapport, "alice")
    assert entry["input"] == QUERY and entry["response"] == "Green Leaf, the vegan place."
    assert entry["source"].startswith("feedback:")
    assert built(rapport, "alice")["entries"] == {"done": 1}

    later = chat(rapport, scripted_upstream, LATER, "chatcmpl-dinner-2", "Steak House again?")
    system = system_of(scripted_upstream)
    assert "Green Leaf, the vegan place." in system and "Suggest a restaurant for dinner" in system
    stage = next(s for s in later.model_extra["rapport"]["stages"] if s["name"] == "rpm")
    assert stage["detail"]["conditioned"] and stage["detail"]["history"] == 1

    # A second feedback on the same response replaces the first, in the history too.
    r = post_feedback(rapport, {"response_id": first.id, "user": "alice", "correction": "Pearl, the seafood place."})
    assert r.status_code == 200 and r.json()["replaced"] == 1
    assert [e["response"] for e in history(rapport, "alice")] == ["Pearl, the seafood place."]
    assert built(rapport, "alice")["entries"] == {"done": 1}
    chat(rapport, scripted_upstream, LATER, "chatcmpl-dinner-3", "Fish?")
    system = system_of(scripted_upstream)
    assert "Pearl, the seafood place." in system and "Green Leaf" not in system


def test_streamed_chat_and_responses_ids_take_feedback(rapport: Any, scripted_upstream: Any) -> None:
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key, max_retries=0)
    scripted_upstream.script(Reply(kind="stream", content="Try Steak House."))
    stream = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": QUERY}], user="alice", stream=True
    )
    streamed_id = {chunk.id for chunk in stream}
    assert streamed_id == {"chatcmpl-scripted"}
    remembered(rapport, "alice", "chatcmpl-scripted")
    r = post_feedback(rapport, {"response_id": "chatcmpl-scripted", "choice": "the vegan one"},
                      **{"X-Rapport-User": "alice"})
    assert r.status_code == 200, r.text

    response = client.responses.create(model="test-model", input="Which film should I watch tonight?", user="alice")
    assert response.id.startswith("resp_")
    remembered(rapport, "alice", response.id)
    r = post_feedback(rapport, {"response_id": response.id, "user": "alice", "rating": 2})
    assert r.status_code == 200, r.text
    by_response = {e["response"]: e for e in history(rapport, "alice")}
    assert by_response["the vegan one"]["input"] == QUERY
    rating = by_response["2"]
    assert rating["task"] == "rating"
    assert rating["input"] == "Which film should I watch tonight?\nAnswer rated: echo: Which film should I watch tonight?"


def test_only_the_tenant_and_user_that_got_the_response_may_give_feedback(rapport: Any, scripted_upstream: Any) -> None:
    got = chat(rapport, scripted_upstream, QUERY, "chatcmpl-mine", "Try Steak House.")
    remembered(rapport, "alice", got.id)
    for key, user in ((rapport.api_key, "bob"), (rapport.api_key_b, "alice")):
        r = post_feedback(rapport, {"response_id": got.id, "user": user, "rating": 1}, key=key)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["param"] == "response_id"
    unknown = post_feedback(rapport, {"response_id": "chatcmpl-never", "user": "alice", "rating": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "response_id"

    bobs_key, _ = rapport.services.keys.create("bob", tenant=TENANT, user="bob")
    pinned = post_feedback(rapport, {"response_id": got.id, "user": "alice", "rating": 1}, key=bobs_key)
    assert pinned.status_code == 403, pinned.text
    assert pinned.json()["error"]["param"] == "user" and pinned.json()["error"]["code"] == "user_mismatch"
    alices_key, _ = rapport.services.keys.create("alice", tenant=TENANT, user="alice")
    own = post_feedback(rapport, {"response_id": got.id, "rating": 5}, key=alices_key)
    assert own.status_code == 200, own.text
    assert history(rapport, "bob") == [] and len(history(rapport, "alice")) == 1


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"response_id": "chatcmpl-x", "user": "alice"}, 400, "rating"),
        ({"response_id": "chatcmpl-x", "user": "alice", "choice": "B", "correction": "C"}, 400, "choice"),
        ({"response_id": "chatcmpl-x", "rating": 3}, 400, "user"),
        ({"response_id": "chatcmpl-x", "user": "alice", "rating": "high"}, 400, "rating"),
        ({"user": "alice", "rating": 3}, 400, "response_id"),
        ({"response_id": "chatcmpl-x", "user": "alice", "rating": 3, "stars": 5}, 400, "stars"),
        ({"response_id": "chatcmpl-x", "user": "alice", "correction": ""}, 400, "correction"),
    ],
)
def test_bad_feedback_is_an_openai_style_error_naming_the_field(
    rapport: Any, body: dict[str, Any], status: int, param: str
) -> None:
    r = post_feedback(rapport, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_a_rating_and_a_correction_together_are_two_entries(rapport: Any, scripted_upstream: Any) -> None:
    got = chat(rapport, scripted_upstream, QUERY, "chatcmpl-both", "Try Steak House.")
    remembered(rapport, "alice", got.id)
    r = post_feedback(rapport, {"response_id": got.id, "user": "alice", "rating": 1, "correction": "Green Leaf."})
    assert r.status_code == 200 and len(r.json()["entry_ids"]) == 2
    assert {(e["task"], e["response"]) for e in history(rapport, "alice")} == {(None, "Green Leaf."), ("rating", "1")}


def test_forget_removes_feedback_and_the_issued_responses(rapport: Any, scripted_upstream: Any) -> None:
    got = chat(rapport, scripted_upstream, QUERY, "chatcmpl-forget", "Try Steak House.")
    remembered(rapport, "alice", got.id)
    assert post_feedback(rapport, {"response_id": got.id, "user": "alice", "choice": "vegan"}).status_code == 200
    built(rapport, "alice")
    loop = rapport.server.loop
    asyncio.run_coroutine_threadsafe(rapport.services.jobs.forget_user(TENANT, "alice"), loop).result(30)
    assert history(rapport, "alice") == []
    assert feedback_book(rapport).store.count(TENANT, "alice") == 0
    after = post_feedback(rapport, {"response_id": got.id, "user": "alice", "choice": "vegan"})
    assert after.status_code == 404


def test_unrecorded_and_rpm_off_responses_are_not_remembered(rapport: Any, scripted_upstream: Any) -> None:
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key, max_retries=0)
    for n, extra in enumerate(({"rapport": {"record": False}}, {"rapport": {"rpm": False}})):
        scripted_upstream.script(Reply(body={**completion("ok", "scripted"), "id": f"chatcmpl-off-{n}"}))
        client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": QUERY}], user="alice", extra_body=extra
        )
    # A recorded one after them lands; the two above never did (checked once it has).
    later = chat(rapport, scripted_upstream, QUERY, "chatcmpl-on", "ok")
    remembered(rapport, "alice", later.id)
    store = feedback_book(rapport).store
    assert store.count(TENANT, "alice") == 1


def test_sdk_feedback_sync(rapport: Any, scripted_upstream: Any) -> None:
    got = chat(rapport, scripted_upstream, QUERY, "chatcmpl-sdk", "Try Steak House.")
    remembered(rapport, "alice", got.id)
    with Rapport(rapport.url, api_key=rapport.api_key, admin_key=rapport.admin_key, tenant=TENANT) as client:
        result = client.feedback(got.id, user="alice", rating=4.5, correction="Green Leaf.")
        assert result.response_id == got.id and len(result.entry_ids) == 2 and result.replaced == 0
        assert result.rating == 4.5 and result.job_id
        again = client.feedback(got.id, user="alice", choice="Pearl")
        assert again.replaced == 2 and len(again.entry_ids) == 1
        with pytest.raises(NotFoundError) as missing:
            client.feedback("chatcmpl-nope", user="alice", rating=1)
        assert missing.value.status == 404 and missing.value.param == "response_id"
        with pytest.raises(RapportError) as bad:
            client.feedback(got.id, user="alice")
        assert bad.value.status == 400 and bad.value.param == "rating"
    assert [e["response"] for e in history(rapport, "alice")] == ["Pearl"]


async def test_sdk_feedback_async(rapport: Any, scripted_upstream: Any) -> None:
    got = await asyncio.to_thread(chat, rapport, scripted_upstream, QUERY, "chatcmpl-async", "Try Steak House.")
    await asyncio.to_thread(remembered, rapport, "alice", got.id)
    async with AsyncRapport(rapport.url, api_key=rapport.api_key, admin_key=rapport.admin_key, tenant=TENANT) as client:
        result = await client.feedback(got.id, user="alice", rating=2)
        assert result.user == "alice" and len(result.entry_ids) == 1
        with pytest.raises(NotFoundError):
            await client.feedback(got.id, user="bob", rating=2)
    entries = await asyncio.to_thread(history, rapport, "alice")
    assert [(e["task"], e["response"]) for e in entries] == [("rating", "2")]


def test_feedback_travels_with_the_users_export(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport(rpm=RPM_ON)  # every plugin: the export and import routes are memory's admin API
    got = chat(rapport, scripted_upstream, QUERY, "chatcmpl-export", "Try Steak House.")
    remembered(rapport, "alice", got.id)
    assert post_feedback(rapport, {"response_id": got.id, "user": "alice", "choice": "vegan"}).status_code == 200
    with admin(rapport) as client:
        document = client.get(f"/admin/users/alice/export?tenant={TENANT}").json()
        [issued] = document["parts"]["rpm"]["issued"]
        assert issued["id"] == got.id and issued["input"] == QUERY and issued["feedback"]
        imported = client.post(f"/admin/users/carol/import?tenant={TENANT}", json=document)
        assert imported.status_code == 201, imported.text
        assert not imported.json()["errors"]
    # The imported response takes carol's feedback, which replaces the imported one instead of adding to it.
    r = post_feedback(rapport, {"response_id": got.id, "user": "carol", "choice": "seafood"})
    assert r.status_code == 200 and r.json()["replaced"] == 1
    assert [e["response"] for e in history(rapport, "carol")] == ["seafood"]
    assert [e["response"] for e in history(rapport, "alice")] == ["vegan"]
