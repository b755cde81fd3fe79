"""RPM inside a real Rapport server, in front of the scripted upstream: admin import, background
construction through the job queue, inspection, conditioning of a chat request, option errors, isolation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply

TENANT = "tenant-a"  # the tenant of the test API key
RPM_ONLY = ("proxy.stages.rpm_plugin:build",)
HISTORY = [
    {"input": "Rate: Blue Fin, a seafood restaurant, expensive.", "response": "5", "task": "rating"},
    {"input": "Rate: Green Leaf, a vegan restaurant, cheap.", "response": "2", "task": "rating"},
    {"input": "Rate: Pearl, a seafood restaurant, cheap.", "response": "4", "task": "rating"},
]
EXTRACTIONS = [
    '{"features": [{"name": "cuisine", "value": "seafood"}, {"name": "price", "value": "expensive"}]}',
    'Sure: {"features": [{"name": "cuisine", "value": "vegan"}, {"name": "price", "value": "cheap"}]}',
    '{"features": [{"name": "cuisine", "value": "seafood"}, {"name": "price", "value": "cheap"}]}',
]
PATHS = [
    '{"reasoning": "Seafood is their favourite and price does not stop them, so 5."}',
    "not json at all {",  # unusable: retried once...
    "still {broken",  # ...then a template path built from stored data
    '{"reasoning": "Seafood wins even when cheap, so 4."}',
]




@pytest.fixture()
def built(make_rapport, scripted_upstream) -> Any:
    h = make_rapport(plugins=RPM_ONLY, rpm={"learn_from_model_answers": True, "learn_from_exchanges": "always"})
    scripted_upstream.script(*(Reply(content=c) for c in EXTRACTIONS + PATHS))
    with admin(h) as client:
        r = client.post(f"/admin/users/alice/history?tenant={TENANT}", json={"items": HISTORY})
        assert r.status_code == 201, r.text
        assert r.json()["imported"] == 3 and r.json()["job_id"]
        summary = wait_until(
            lambda: (s := client.get(f"/admin/users/alice/rpm?tenant={TENANT}").json())["entries"] == {"done": 3} and s
        )
    assert summary["factors"] == 2 and summary["paths"] == 3
    assert summary["jobs"][0]["status"] in ("succeeded", "running")
    return h


def test_import_builds_in_background_and_is_inspectable(built) -> None:
    with admin(built) as client:
        factors = client.get(f"/admin/users/alice/rpm/factors?tenant={TENANT}").json()["data"]
        by_name = {f["name"]: f for f in factors}
        assert set(by_name) == {"cuisine", "price"}
        seafood = next(v for v in by_name["cuisine"]["stats"]["values"] if v["value"] == "seafood")
        assert seafood["count"] == 2 and seafood["response_mean"] == 4.5
        detail = client.get(f"/admin/users/alice/rpm/factors/{by_name['cuisine']['id']}?tenant={TENANT}").json()
        assert {f["value"] for f in detail["features"]} == {"seafood", "vegan"}
        entries = client.get(f"/admin/users/alice/rpm/history?tenant={TENANT}").json()["data"]
        one = client.get(f"/admin/users/alice/rpm/history/{entries[0]['id']}?tenant={TENANT}").json()
        assert one["reasoning"]["source"] == "llm" and "Seafood is their favourite" in one["reasoning"]["text"]
        paths = client.get(f"/admin/users/alice/rpm/paths?tenant={TENANT}").json()["data"]
        assert sorted(p["source"] for p in paths) == ["llm", "llm", "template"]
        assert len(client.get(f"/admin/users/alice/rpm/features?tenant={TENANT}").json()["data"]) == 6
        # Another tenant's user of the same name sees nothing.
        other = client.get("/admin/users/alice/rpm?tenant=tenant-b").json()
        assert other["entries"] == {} and other["factors"] == 0
        assert client.get(f"/admin/users/alice/rpm/history/999999?tenant={TENANT}").status_code == 404
        # Deleting an entry recomputes the factor statistics.
        vegan_id = next(e["id"] for e in entries if "vegan" in e["input"])
        assert client.delete(f"/admin/users/alice/rpm/history/{vegan_id}?tenant={TENANT}").status_code == 200
        factors = client.get(f"/admin/users/alice/rpm/factors?tenant={TENANT}").json()["data"]
        cuisine = next(f for f in factors if f["name"] == "cuisine")
        assert [v["value"] for v in cuisine["stats"]["values"]] == ["seafood"]


def test_admin_routes_need_the_admin_key(built) -> None:
    r = httpx.get(f"{built.url}/admin/users/alice/rpm", headers={"Authorization": f"Bearer {built.api_key}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = httpx.post(f"{built.url}/admin/users/alice/history", json={"items": []},
                   headers={"Authorization": f"Bearer {built.admin_key}"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_chat_request_is_conditioned_on_factors_and_paths(built, scripted_upstream) -> None:
    scripted_upstream.reset()
    scripted_upstream.script(
        Reply(content='{"features": [{"name": "cuisine", "value": "seafood"}, {"name": "price", "value": "cheap"}]}'),
        Reply(content="<reasoning>Seafood, and this person rates seafood high.</reasoning>\n4"),
    )
    client = openai.OpenAI(base_url=built.base_url, api_key=built.api_key)
    result = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "Rate: Harbor Shack, a seafood restaurant, cheap."}],
        user="alice",
        extra_body={"rapport": {"rpm": {"top_k": 2, "mode": "llm", "budget_ms": 10000}}},
    )
    final = scripted_upstream.requests[1].json
    system = final["messages"][0]
    assert system["role"] == "system"
    assert '- "cuisine":' in system["content"] and "avg response 4.5" in system["content"]
    assert "Seafood is their favourite" in system["content"]  # a retrieved reasoning path
    assert "Blue Fin" in system["content"] and "<reasoning>" in system["content"]
    assert final["messages"][-1]["content"] == "Rate: Harbor Shack, a seafood restaurant, cheap."
    rapport = result.model_extra["rapport"]
    stage = next(s for s in rapport["stages"] if s["name"] == "rpm")
    assert stage["ran"] and stage["detail"]["conditioned"] and stage["detail"]["retrieval"] == "features"
    assert stage["detail"]["extractor"] == "llm" and len(stage["detail"]["examples"]) == 2


def test_exchanges_are_learnt_in_the_background(built, scripted_upstream) -> None:
    scripted_upstream.reset()
    client = openai.OpenAI(base_url=built.base_url, api_key=built.api_key)
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Rate: Dock 9, seafood, cheap."}], user="alice",
        extra_body={"rapport": {"rpm": {"mode": "cheap"}}},
    )
    with admin(built) as c:
        entries = wait_until(
            lambda: [e for e in c.get(f"/admin/users/alice/rpm/history?tenant={TENANT}").json()["data"]
                     if e["source"] == "exchange" and e["status"] in ("done", "skipped")]
        )
    assert entries[0]["input"] == "Rate: Dock 9, seafood, cheap."
    assert entries[0]["response"] == "echo: Rate: Dock 9, seafood, cheap."


def test_bad_rpm_option_is_an_openai_style_400(built) -> None:
    r = httpx.post(
        f"{built.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {built.api_key}"},
        json={"model": "test-model", "user": "alice", "messages": [{"role": "user", "content": "hi"}],
              "rapport": {"rpm": {"top_k": "many"}}},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "rapport.rpm.top_k"
    r = httpx.post(
        f"{built.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {built.api_key}"},
        json={"model": "test-model", "user": "alice", "messages": [{"role": "user", "content": "hi"}],
              "rapport": {"rpm": {"surprise": 1}}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "rapport.rpm.surprise"


def test_forgetting_the_user_removes_rpm_data(built) -> None:
    loop = built.server.loop
    report = asyncio.run_coroutine_threadsafe(built.services.jobs.forget_user(TENANT, "alice"), loop).result(30)
    assert report["rpm"]["entries"] == 3
    with admin(built) as client:
        summary = client.get(f"/admin/users/alice/rpm?tenant={TENANT}").json()
        assert summary["entries"] == {} and summary["features"] == 0 and summary["factors"] == 0
        assert summary["paths"] == 0


def test_reasoning_is_kept_out_of_the_answer_unless_asked(built, scripted_upstream) -> None:
    client = openai.OpenAI(base_url=built.base_url, api_key=built.api_key)
    for keep, expected in ((False, "4"), (True, "<reasoning>seafood</reasoning>\n4")):
        scripted_upstream.reset()
        scripted_upstream.script(Reply(content="<reasoning>seafood</reasoning>\n4"))
        result = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Rate: Cove, seafood, cheap."}], user="alice",
            extra_body={"rapport": {"rpm": {"mode": "cheap", "return_reasoning": keep}, "record": False}},
        )
        assert result.choices[0].message.content == expected, json.dumps(result.model_dump())[:300]
        scripted_upstream.script(Reply(content="<reasoning>seafood</reasoning>\n4"))
        stream = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Rate: Cove, seafood, cheap."}], user="alice",
            extra_body={"rapport": {"rpm": {"mode": "cheap", "return_reasoning": keep}, "record": False}}, stream=True,
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed.strip() == expected.strip()


def test_opted_out_and_unrecorded_exchanges_are_not_learnt(make_rapport, scripted_upstream) -> None:
    h = make_rapport(plugins=RPM_ONLY, rpm={"learn_from_model_answers": True, "learn_from_exchanges": "always"})
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    for extra in ({"rapport": {"rpm": False}}, {"rapport": {"record": False}}):
        result = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Rate: Quay, seafood."}], user="carol",
            extra_body=extra,
        )
        assert result.choices[0].message.content
    # A later recorded exchange is learnt; the two above never were (checked after it landed).
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Rate: Wharf, seafood."}], user="carol"
    )
    with admin(h) as c:
        entries = wait_until(lambda: c.get(f"/admin/users/carol/rpm/history?tenant={TENANT}").json()["data"])
    assert [e["input"] for e in entries] == ["Rate: Wharf, seafood."]
