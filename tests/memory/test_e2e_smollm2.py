"""End-to-end with the real SmolLM2 (llama.cpp) upstream: a preference stated in one conversation is
retrieved into a later conversation's upstream request, the real model writes a summary offline, and the
admin API shows both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.memory.test_proxy import MEMORY_ONLY, TENANT, admin, memories, wait_until
from tests.rpm.recording import RecordingProxy

pytestmark = pytest.mark.e2e

PREFERENCE = "I only eat vegan food, please keep that in mind for every recipe."


@pytest.fixture()
def recorder(smollm2_url: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(smollm2_url).start()
    yield proxy
    proxy.stop()


def test_preference_reaches_later_conversation_with_smollm2(
    make_rapport: Any, recorder: RecordingProxy
) -> None:
    h = make_rapport(
        upstream_url=recorder.base_url,
        plugins=MEMORY_ONLY,
        model_list=[
            {
                "model_name": "smollm2",
                "litellm_params": {
                    "model": "openai/smollm2",
                    "api_base": recorder.base_url,
                    "api_key": "sk-local",
                    "timeout": 120,
                },
            }
        ],
        memory={"summary_every": 1, "summary_max_tokens": 60},
    )
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": PREFERENCE}], user="vera", max_tokens=16
    )
    with admin(h) as a:
        stored = wait_until(lambda: memories(a, "vera"), within=120)
        assert stored[0]["text"] == PREFERENCE and stored[0]["model"] == "smollm2"
        # The summary job ran against the real model (its text is whatever SmolLM2 wrote).
        summaries = wait_until(
            lambda: a.get("/admin/users/vera/summaries", params={"tenant": TENANT}).json()["data"], within=180
        )
        assert summaries[0]["version"] == 1 and summaries[0]["text"].strip()

        before = len(recorder.chat_bodies())
        result = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Suggest a dinner recipe for tonight."}],
            user="vera",
            max_tokens=24,
            extra_body={"rapport": {"conversation_id": "second"}},
        )
        assert result.choices[0].message.content is not None
        upstream = recorder.chat_bodies()[before:]
        final = upstream[-1]["messages"]
        assert final[0]["role"] == "system" and PREFERENCE in final[0]["content"]
        assert "Summary of the user (task: general)" in final[0]["content"]
        stage = next(s for s in result.model_extra["rapport"]["stages"] if s["name"] == "memory")
        assert stage["detail"]["items"] >= 1 and stage["detail"]["summary_version"] == 1

        found = memories(a, "vera", q="vegan recipes", limit=1)
        assert found[0]["text"] == PREFERENCE
        profile = a.get("/admin/users/vera", params={"tenant": TENANT}).json()
        assert profile["summaries"][0]["latest_version"] >= 1
