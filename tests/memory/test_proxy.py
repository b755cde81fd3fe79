"""Memory inside a real Rapport server in front of the scripted upstream: a preference from one conversation
reaches a later one's upstream request; the admin API shows, searches, edits, exports, imports and forgets it."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply

TENANT = "tenant-a"  # the tenant of the test API key
MEMORY_ONLY = ("proxy.stages.memory_plugin:build",)
PREFERENCE = "Please remember that I am strictly vegetarian and allergic to peanuts."




def memories(client: httpx.Client, user: str, tenant: str = TENANT, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/admin/users/{user}/memories", params={"tenant": tenant, **params})
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


@pytest.fixture()
def rapport(make_rapport: Any) -> Any:
    return make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000})


def test_preference_reaches_a_later_conversation(rapport: Any, scripted_upstream: Any) -> None:
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": PREFERENCE}],
        user="alice",
        extra_body={"rapport": {"conversation_id": "c1"}},
    )
    with admin(rapport) as a:
        stored = wait_until(lambda: memories(a, "alice"))
        assert stored[0]["text"] == PREFERENCE and stored[0]["conversation_id"] == "c1"
        assert stored[0]["role"] == "user"  # assistant turns are off by default

    scripted_upstream.reset()
    result = client.chat.completions.create(
        model="test-model",
        messages=[
            {"role": "system", "content": "You are a helpful cook."},
            {"role": "user", "content": "What should I make for dinner tonight?"},
        ],
        user="alice",
        extra_body={"rapport": {"conversation_id": "c2", "memory": {"k": 3}}},
    )
    sent = scripted_upstream.requests[0].json["messages"]
    assert len(sent) == 2 and sent[0]["role"] == "system"
    assert sent[0]["content"].startswith("You are a helpful cook.\n\n<user_memory>")
    assert "strictly vegetarian" in sent[0]["content"]
    ext = result.model_extra["rapport"]
    stage = next(s for s in ext["stages"] if s["name"] == "memory")
    assert stage["ran"] and stage["detail"]["items"] == 1 and stage["detail"]["tokens_added"] > 0

    # Another user, and the same user name in another tenant, get nothing of alice's.
    for key, user in ((rapport.api_key, "bob"), (rapport.api_key_b, "alice")):
        scripted_upstream.reset()
        other = openai.OpenAI(base_url=rapport.base_url, api_key=key)
        other.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "What should I eat?"}], user=user
        )
        assert "vegetarian" not in str(scripted_upstream.requests[0].json["messages"])

    # memory=false: nothing added for this call.
    scripted_upstream.reset()
    client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "dinner ideas?"}],
        user="alice",
        extra_body={"rapport": {"memory": False}},
    )
    assert scripted_upstream.requests[0].json["messages"] == [{"role": "user", "content": "dinner ideas?"}]


def test_bad_memory_options_are_400_with_param(rapport: Any) -> None:
    headers = {"Authorization": f"Bearer {rapport.api_key}"}
    for options, param in (({"k": -1}, "rapport.memory.k"), ({"bogus": 1}, "rapport.memory.bogus")):
        r = httpx.post(
            f"{rapport.base_url}/chat/completions",
            headers=headers,
            json={
                "model": "test-model",
                "user": "u",
                "messages": [{"role": "user", "content": "hi"}],
                "rapport": {"memory": options},
            },
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


def test_admin_crud_search_export_import_forget(rapport: Any) -> None:
    with admin(rapport) as a:
        for text in ("I love sailing on weekends.", "My daughter is called Ana.", "I work as a nurse."):
            r = a.post("/admin/users/carol/memories", params={"tenant": TENANT}, json={"text": text})
            assert r.status_code == 201, r.text
        again = a.post(
            "/admin/users/carol/memories", params={"tenant": TENANT}, json={"text": "I work as a nurse."}
        )
        assert again.status_code == 201 and len(memories(a, "carol")) == 3  # exact duplicate stored once

        found = memories(a, "carol", q="boats and the sea", limit=1)
        assert found[0]["text"] == "I love sailing on weekends." and found[0]["score"] > 0.2
        users = a.get("/admin/users", params={"tenant": TENANT}).json()
        assert users["total"] == 1 and users["data"][0]["user"] == "carol"
        profile = a.get("/admin/users/carol", params={"tenant": TENANT}).json()
        assert profile["items"] == 3 and profile["roles"] == {"user": 3}

        nurse = next(m for m in memories(a, "carol") if "nurse" in m["text"])
        r = a.patch(
            f"/admin/users/carol/memories/{nurse['id']}",
            params={"tenant": TENANT},
            json={"text": "I work as a firefighter."},
        )
        assert r.status_code == 200 and r.json()["text"] == "I work as a firefighter."
        assert memories(a, "carol", q="fire brigade", limit=1)[0]["id"] == nurse["id"]
        assert (
            a.get(f"/admin/users/carol/memories/{nurse['id']}", params={"tenant": "tenant-b"}).status_code
            == 404
        )

        exported = a.get("/admin/users/carol/export", params={"tenant": TENANT}).json()
        assert len(exported["parts"]["memory"]["items"]) == 3
        r = a.post("/admin/users/dave/import", params={"tenant": "tenant-b"}, json=exported)
        assert r.status_code == 201 and r.json()["items"] == 3
        assert len(memories(a, "dave", tenant="tenant-b")) == 3

        sail = next(m for m in memories(a, "carol") if "sailing" in m["text"])
        assert (
            a.delete(f"/admin/users/carol/memories/{sail['id']}", params={"tenant": TENANT}).status_code
            == 200
        )
        assert len(memories(a, "carol")) == 2

        gone = a.delete("/admin/users/carol", params={"tenant": TENANT})
        assert gone.status_code == 200 and gone.json()["removed"]["memory"]["items"] == 2
        assert memories(a, "carol") == []
        assert a.get("/admin/users/carol", params={"tenant": TENANT}).status_code == 404
        assert len(memories(a, "dave", tenant="tenant-b")) == 3  # the copy in the other tenant stays

        r = a.post("/admin/users/x/memories", params={"tenant": TENANT}, json={"text": ""})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"

    r = httpx.get(f"{rapport.url}/admin/users", headers={"Authorization": f"Bearer {rapport.api_key}"})
    assert r.status_code == 403


def test_summary_regenerated_via_jobs_and_composed(make_rapport: Any, scripted_upstream: Any) -> None:
    h = make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000, "summary_item_fraction": 0.25})
    with admin(h) as a:
        a.post("/admin/users/erin/memories", params={"tenant": TENANT}, json={"text": PREFERENCE})
        scripted_upstream.reset()
        scripted_upstream.script(Reply(content="Erin is vegetarian and allergic to peanuts."))
        r = a.post("/admin/users/erin/summaries/regenerate", params={"tenant": TENANT})
        assert r.status_code == 202
        [job_id] = r.json()["job_ids"]
        job = wait_until(lambda: (j := a.get(f"/admin/jobs/{job_id}").json())["status"] == "succeeded" and j)
        assert job["progress"] == 1.0 and job["kind"] == "memory.summary"
        assert "strictly vegetarian" in str(scripted_upstream.requests[0].json["messages"])
        summaries = a.get("/admin/users/erin/summaries", params={"tenant": TENANT}).json()["data"]
        assert summaries[0]["version"] == 1 and "peanuts" in summaries[0]["text"]
        listing = a.get("/admin/jobs", params={"status": "succeeded"}).json()
        assert listing["total"] >= 1 and listing["counts"]["succeeded"] >= 1

    scripted_upstream.reset()
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Plan my lunch."}], user="erin"
    )
    system = scripted_upstream.requests[0].json["messages"][0]["content"]
    assert 'Summary of the user (task: general): "Erin is vegetarian' in system
