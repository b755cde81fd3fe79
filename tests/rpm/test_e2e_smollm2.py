"""End-to-end with the real SmolLM2 (llama.cpp): construction survives its imperfect outputs, and the
conditioned prompt reaches the model (captured by a recording pass-through)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.rpm.recording import RecordingProxy
from tests.rpm.test_proxy import RPM_ONLY, TENANT, wait_until

pytestmark = pytest.mark.e2e

HISTORY = [
    {"input": "Rate this movie from 1 to 5. Title: Night Harbor. Genre: horror. Length: long.", "response": "1"},
    {"input": "Rate this movie from 1 to 5. Title: Sunny Days. Genre: comedy. Length: short.", "response": "5"},
    {"input": "Rate this movie from 1 to 5. Title: The Crypt. Genre: horror. Length: short.", "response": "2"},
]


@pytest.fixture()
def recorder(smollm2_url: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(smollm2_url).start()
    yield proxy
    proxy.stop()


def test_construction_and_conditioning_with_smollm2(make_rapport, recorder: RecordingProxy) -> None:
    h = make_rapport(
        upstream_url=recorder.base_url,
        plugins=RPM_ONLY,
        model_list=[
            {
                "model_name": "smollm2",
                "litellm_params": {"model": "openai/smollm2", "api_base": recorder.base_url, "api_key": "sk-local", "timeout": 120},
            }
        ],
        rpm={"extract_max_tokens": 96, "reasoning_max_tokens": 80},
    )
    admin = httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {h.admin_key}"}, timeout=30)
    r = admin.post(f"/admin/users/bob/history?tenant={TENANT}", json={"items": HISTORY})
    assert r.status_code == 201, r.text

    def finished() -> dict | None:
        s = admin.get(f"/admin/users/bob/rpm?tenant={TENANT}").json()
        return s if s["jobs"] and s["jobs"][0]["status"] in ("succeeded", "failed") else None

    summary = wait_until(finished, within=400)
    assert summary["jobs"][0]["status"] == "succeeded", summary["jobs"][0]
    # Every entry ends constructed (LLM features, or the cheap fallback when SmolLM2's output was unusable).
    assert summary["entries"] == {"done": 3}, summary
    assert summary["factors"] >= 1 and summary["paths"] == 3
    entries = admin.get(f"/admin/users/bob/rpm/history?tenant={TENANT}&limit=10").json()["data"]
    for e in entries:
        detail = admin.get(f"/admin/users/bob/rpm/history/{e['id']}?tenant={TENANT}").json()
        assert detail["features"], detail
        assert detail["reasoning"]["text"]
        # No invented record: every kept feature value is grounded in the entry's input.
        for f in detail["features"]:
            if f["extractor"] == "llm":
                assert any(w in detail["input"].lower() for w in f["value"].lower().split()), f
    genre = [f for f in admin.get(f"/admin/users/bob/rpm/factors?tenant={TENANT}").json()["data"] if f["name"] == "genre"]
    assert genre and genre[0]["stats"]["entries"] == 3

    before = len(recorder.chat_bodies())
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    result = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Rate this movie from 1 to 5. Title: Dark Woods. Genre: horror. Length: short."}],
        user="bob",
        max_tokens=48,
        temperature=0,
        extra_body={"rapport": {"rpm": {"mode": "auto", "budget_ms": 20000, "top_k": 2}}},
    )
    sent = recorder.chat_bodies()[before:]
    final = sent[-1]
    system = final["messages"][0]
    assert system["role"] == "system" and '- "genre":' in system["content"]
    assert "avg response" in system["content"] and "Example 1:" in system["content"]
    assert final["messages"][-1]["content"].endswith("Genre: horror. Length: short.")
    stage = next(s for s in result.model_extra["rapport"]["stages"] if s["name"] == "rpm")
    assert stage["detail"]["conditioned"] and len(stage["detail"]["examples"]) == 2
    # Feature-level retrieval: the horror examples come first for a horror query.
    top = admin.get(f"/admin/users/bob/rpm/history/{stage['detail']['examples'][0]['entry_id']}?tenant={TENANT}").json()
    assert "horror" in top["input"]
    admin.close()
