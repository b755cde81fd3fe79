"""A user's next request sees the exchange they just made (issue 12, point 4, on one replica).

Recording happens after the response, off the request path; a client that sends its next message at once
used to be answered without it (tried with LangChain: the stream right after a stated allergy missed it).
The pipeline now marks the recording as in flight before the response ends and the next request of the same
user waits for it, up to `server.recording_wait_ms`.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest


def _prompt_for(upstream: Any, question: str) -> str:
    for seen in reversed(list(upstream.requests)):
        messages = seen.json.get("messages") or []
        if messages and messages[-1].get("content") == question:
            return str(messages[:-1])
    raise AssertionError(f"the upstream never received {question!r}")


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_the_next_message_sees_the_exchange_just_made(make_rapport: Any, scripted_upstream: Any, stream: bool) -> None:
    # A generous bound: the test is about the ordering, not about how fast this box embeds.
    rapport = make_rapport(server={"recording_wait_ms": 10_000})
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key, default_headers={"X-Rapport-User": "dana"}, max_retries=0)
    for n in range(6):
        statement = f"I am allergic to ingredient zq{n}x."
        if stream:
            for _ in client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": statement}], stream=True):
                pass
        else:
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": statement}])
        question = f"Suggest a dinner, round {n}."
        client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": question}], extra_body={"rapport": {"record": False}}
        )
        assert f"zq{n}x" in _prompt_for(scripted_upstream, question), f"round {n}: the exchange just made was not in the prompt"
    assert rapport.services.recordings.count(("tenant-a", "dana")) == 0
