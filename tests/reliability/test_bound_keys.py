"""A key bound to one user pins that user on every route that takes one (issue 13, the bound-key fix).

Before the fix, `rapport keys create --tenant acme --user alice` gave a key that could act as bob by sending
`user="bob"`: bob's stored PIN was injected into the upstream prompt of a request made with alice's key.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.support.helpers import admin, wait_until

PIN = "PIN-48213-bob"


@pytest.fixture()
def acme(make_rapport: Any) -> Any:
    rapport = make_rapport()
    alice_key, _ = rapport.services.keys.create("alice", tenant="acme", user="alice")
    bob_key, _ = rapport.services.keys.create("bob", tenant="acme", user="bob")
    return rapport, alice_key, bob_key


def _bob_tells_his_pin(rapport: Any, bob_key: str) -> None:
    client = openai.OpenAI(base_url=rapport.base_url, api_key=bob_key, max_retries=0)
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": f"Remember: my bank {PIN}."}]
    )
    with admin(rapport) as http:

        def stored() -> bool:
            listing = http.get("/admin/users/bob/memories", params={"tenant": "acme"})
            return listing.status_code == 200 and any(PIN in m["text"] for m in listing.json()["data"])

        wait_until(stored, within=30)


# Every way a request can name its user, as the OpenAI SDK sends it.
NAMINGS: list[tuple[str, dict[str, Any]]] = [
    ("user", {"user": "bob"}),
    ("safety_identifier", {"extra_body": {"safety_identifier": "bob"}}),
    ("metadata.user_id", {"extra_body": {"metadata": {"user_id": "bob"}}}),
    ("X-Rapport-User", {"extra_headers": {"X-Rapport-User": "bob"}}),
]


@pytest.mark.parametrize(("param", "naming"), NAMINGS, ids=[n for n, _ in NAMINGS])
def test_a_bound_key_cannot_act_as_another_user_of_its_tenant(acme: Any, scripted_upstream: Any, param: str, naming: dict[str, Any]) -> None:
    rapport, alice_key, bob_key = acme
    _bob_tells_his_pin(rapport, bob_key)
    scripted_upstream.requests.clear()
    alice = openai.OpenAI(base_url=rapport.base_url, api_key=alice_key, max_retries=0)
    messages = [{"role": "user", "content": "What is my bank PIN?"}]

    with pytest.raises(openai.PermissionDeniedError) as refused:
        alice.chat.completions.create(model="test-model", messages=messages, stream=False, **naming)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == param and error["code"] == "user_mismatch"
    with pytest.raises(openai.PermissionDeniedError):
        alice.chat.completions.create(model="test-model", messages=messages, stream=True, **naming)
    with pytest.raises(openai.PermissionDeniedError):
        alice.completions.create(model="test-model", prompt="What is my bank PIN?", **naming)
    with pytest.raises(openai.PermissionDeniedError):
        alice.embeddings.create(model="test-model", input="What is my bank PIN?", **naming)
    # Refused before anything reached the upstream.
    assert scripted_upstream.requests == []


def test_a_bound_key_acts_as_its_own_user(acme: Any, scripted_upstream: Any) -> None:
    rapport, alice_key, bob_key = acme
    _bob_tells_his_pin(rapport, bob_key)
    scripted_upstream.requests.clear()
    alice = openai.OpenAI(base_url=rapport.base_url, api_key=alice_key, max_retries=0)
    messages = [{"role": "user", "content": "What is my bank PIN?"}]
    # No user named, or its own user named through any field: served as alice.
    alice.chat.completions.create(model="test-model", messages=messages)
    for _, naming in NAMINGS:
        same = {k: (v if not isinstance(v, dict) else _rename(v, "alice")) for k, v in naming.items()}
        if "user" in same:
            same["user"] = "alice"
        response = alice.chat.completions.with_raw_response.create(model="test-model", messages=messages, **same)
        assert response.http_response.status_code == 200
        assert response.parse().model_extra["rapport"]["user"] == "alice"  # type: ignore[index]
    chats = [r for r in scripted_upstream.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 1 + len(NAMINGS)
    for seen in chats:
        assert PIN not in str(seen.json), "bob's stored text reached a request made with alice's key"
        assert seen.json["user"] == "alice"


def test_an_unbound_key_still_chooses_its_user(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    response = httpx.post(
        f"{rapport.base_url}/chat/completions",
        headers={"authorization": f"Bearer {rapport.api_key}", "x-rapport-user": "carol"},
        json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "user": "carol"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["rapport"]["user"] == "carol"


def _rename(value: dict[str, Any], user: str) -> dict[str, Any]:
    return {k: (_rename(v, user) if isinstance(v, dict) else user) for k, v in value.items()}
