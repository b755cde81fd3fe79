"""Memory and RPM composing one request, through the official openai SDK against a real Rapport in front of
the scripted upstream, with a named user who has memories and constructed RPM history:

- both stages add to exactly one leading system (or developer) message, whatever its content shape, and
  leave every other message, the tools and the other fields as the client sent them;
- RPM's reasoning is kept out of every choice (n = 2), streamed or not, and a filter's held-back tail goes
  out before the chunk that finishes its choice and before the usage chunk;
- an image-only turn retrieves nothing by similarity; a summary that does not fit the budget neither costs
  items nor is reported;
- /v1/completions is a pass-through: nothing personalizes it.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import openai
import pytest

from reasoning.rpm.generate import REASONING_INSTRUCTION
from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply, chunk

TENANT = "tenant-a"  # the tenant of the test API key
USER = "alice"
PLUGINS = ("proxy.stages.memory_plugin:build", "proxy.stages.rpm_plugin:build")
MEMORY_MARK = "<user_memory>"
PREFERENCE = "I am strictly vegetarian and I love spicy food."
HISTORY = [
    {"input": "Rate: Blue Fin, a seafood restaurant, expensive.", "response": "5", "task": "rating"},
    {"input": "Rate: Green Leaf, a vegan restaurant, cheap.", "response": "2", "task": "rating"},
    {"input": "Rate: Pearl, a seafood restaurant, cheap.", "response": "4", "task": "rating"},
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_menu", "arguments": '{"place": "Harbor"}'}}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_menu",
            "parameters": {"type": "object", "properties": {"place": {"type": "string"}}},
        },
    }
]
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
# Everything after the (optional) leading system message: an image turn, a tool call and its result.
CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "Here is the menu of Harbor Shack."}, IMAGE]},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"dishes": ["grilled fish", "salad"]}'},
    {"role": "user", "content": "Rate: Harbor Shack, a seafood restaurant, cheap. What should I eat there?"},
]
LEADS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "string": {"role": "system", "content": "You are a helpful food critic."},
    "parts": {"role": "system", "content": [{"type": "text", "text": "You are a helpful food critic."}]},
    "developer": {"role": "developer", "content": "You are a helpful food critic."},
    "developer-parts": {"role": "developer", "content": [{"type": "text", "text": "You are a food critic."}]},
}
STAGES: dict[str, dict[str, Any]] = {
    "memory": {"memory": True, "rpm": False},
    "rpm": {"memory": False, "rpm": {"mode": "cheap", "return_reasoning": False}},
    "both": {"memory": True, "rpm": {"mode": "cheap", "return_reasoning": False}},
}


@pytest.fixture()
def rapport(make_rapport: Any) -> Any:
    h = make_rapport(
        plugins=PLUGINS,
        # Every stored item is a candidate (the tests decide what is relevant), and a summary takes the
        # place of three quarters of k (so a summary that wrongly shrinks k shows).
        memory={"summary_every": 1000, "min_similarity": -1.0, "summary_item_fraction": 0.25},
        rpm={"construction_mode": "cheap", "request_mode": "cheap"},
    )
    with admin(h) as client:
        r = client.post(f"/admin/users/{USER}/memories?tenant={TENANT}", json={"text": PREFERENCE})
        assert r.status_code == 201, r.text
        r = client.post(f"/admin/users/{USER}/history?tenant={TENANT}", json={"items": HISTORY})
        assert r.status_code == 201, r.text
        wait_until(lambda: _memory_count(client) == 1)
        wait_until(lambda: client.get(f"/admin/users/{USER}/rpm?tenant={TENANT}").json()["entries"] == {"done": 3})
    return h


def _memory_count(client: Any) -> int:
    r = client.get(f"/admin/users/{USER}/memories?tenant={TENANT}")
    assert r.status_code == 200, r.text
    return len(r.json()["data"])


def _client(h: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.api_key)


def _options(stages: dict[str, Any]) -> dict[str, Any]:
    return {"rapport": {**stages, "record": False}}


def _stage(result: Any, name: str) -> dict[str, Any]:
    stages = result.model_extra["rapport"]["stages"]
    found: dict[str, Any] = next(s for s in stages if s["name"] == name)
    return found


def _rest(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "messages"}


def test_memory_and_rpm_compose_into_one_leading_system_message(rapport: Any, scripted_upstream: Any) -> None:
    client = _client(rapport)
    for lead_name, lead in LEADS.items():
        messages = ([copy.deepcopy(lead)] if lead else []) + copy.deepcopy(CONVERSATION)
        kwargs: dict[str, Any] = {
            "model": "test-model", "messages": messages, "user": USER, "tools": TOOLS, "tool_choice": "auto",
            "parallel_tool_calls": False, "temperature": 0.2, "stop": ["\n\n\n"],
        }
        # What the upstream gets for this request with both stages off: everything personalization must keep.
        scripted_upstream.reset()
        client.chat.completions.create(**kwargs, extra_body=_options({"memory": False, "rpm": False}))
        plain = scripted_upstream.requests[-1].json
        for stages_name, stages in STAGES.items():
            where = f"{lead_name} system message, {stages_name}"
            scripted_upstream.reset()
            result = client.chat.completions.create(**kwargs, extra_body=_options(stages))
            sent = scripted_upstream.requests[-1].json
            assert _rest(sent) == _rest(plain), where
            leading = [m for m in sent["messages"] if m["role"] in ("system", "developer")]
            assert len(leading) == 1, where
            first = sent["messages"][0]
            assert first["role"] in ("system", "developer"), where
            if lead is None:
                assert sent["messages"][1:] == plain["messages"], where
                assert first["role"] == "system" and isinstance(first["content"], str), where
                added = first["content"]
            else:
                assert sent["messages"][1:] == plain["messages"][1:], where
                assert first["role"] == plain["messages"][0]["role"], where
                original = plain["messages"][0]["content"]
                if isinstance(original, str):
                    assert first["content"].startswith(original + "\n\n"), where
                    added = first["content"][len(original) :]
                else:
                    assert first["content"][: len(original)] == original, where
                    extra = first["content"][len(original) :]
                    assert extra and all(p["type"] == "text" for p in extra), where
                    added = "\n".join(p["text"] for p in extra)
            memory_on, rpm_on = stages["memory"] is not False, stages["rpm"] is not False
            assert (MEMORY_MARK in added) is memory_on and (PREFERENCE in added) is memory_on, where
            assert (REASONING_INSTRUCTION in added) is rpm_on, where
            if memory_on and rpm_on:
                assert added.index(MEMORY_MARK) < added.index(REASONING_INSTRUCTION), where
            # Each addition appears once in the whole request: nothing was put anywhere else.
            raw = json.dumps(sent)
            assert raw.count(REASONING_INSTRUCTION) == int(rpm_on) and raw.count(MEMORY_MARK) == int(memory_on)
            assert _stage(result, "rpm" if rpm_on else "memory")["ran"], where
            if rpm_on:
                assert _stage(result, "rpm")["detail"]["conditioned"] is True, where


def _choices(*contents: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
            for i, c in enumerate(contents)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def test_reasoning_is_stripped_from_every_choice(rapport: Any, scripted_upstream: Any) -> None:
    client = _client(rapport)
    scripted_upstream.script(
        Reply(body=_choices("<reasoning>Seafood, rated high.</reasoning>\n4", "<reasoning>Cheap fish.</reasoning>\n5"))
    )
    result = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Rate: Harbor Shack, seafood, cheap."}],
        user=USER, n=2, extra_body=_options(STAGES["both"]),
    )
    assert scripted_upstream.requests[-1].json["n"] == 2
    assert [c.message.content for c in result.choices] == ["4", "5"]
    assert _stage(result, "rpm")["detail"]["conditioned"] is True


def _stream_choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    event = chunk("scripted", delta, finish)
    event["choices"][0]["index"] = index
    return event


def _read_stream(stream: Any) -> tuple[dict[int, str], list[str]]:
    """Each choice's text, and the order of what came: 'content i', 'finish i', 'usage'; content after its
    choice finished, or anything after the usage chunk, fails here."""
    texts: dict[int, str] = {}
    order: list[str] = []
    finished: set[int] = set()
    for part in stream:
        assert "usage" not in order, f"a chunk after the usage chunk: {part}"
        if part.usage is not None:
            order.append("usage")
        for choice in part.choices:
            if choice.delta.content:
                assert choice.index not in finished, f"content for choice {choice.index} after it finished"
                texts[choice.index] = texts.get(choice.index, "") + choice.delta.content
                order.append(f"content {choice.index}")
            if choice.finish_reason:
                finished.add(choice.index)
                order.append(f"finish {choice.index}")
    return texts, order


def test_streamed_reasoning_is_stripped_from_every_choice_tails_before_finish(
    rapport: Any, scripted_upstream: Any
) -> None:
    usage = {**chunk("scripted", {}), "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}}
    events = [
        _stream_choice(0, {"role": "assistant", "content": ""}),
        _stream_choice(1, {"role": "assistant", "content": ""}),
        _stream_choice(0, {"content": "<reas"}),
        _stream_choice(1, {"content": "<reasoning>They like"}),
        _stream_choice(0, {"content": "oning>Seafood, rated high.</reas"}),
        _stream_choice(1, {"content": " fish.\nSo: 5"}),  # never closed: its last line is the answer
        _stream_choice(0, {"content": "oning>\n4"}),
        _stream_choice(1, {}, "stop"),
        _stream_choice(0, {"content": " stars"}, "stop"),  # the finishing chunk carries content too
        usage,
    ]
    scripted_upstream.script(Reply(events=events))
    stream = _client(rapport).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Rate: Harbor Shack, seafood, cheap."}],
        user=USER, n=2, stream=True, stream_options={"include_usage": True}, extra_body=_options(STAGES["both"]),
    )
    texts, order = _read_stream(stream)
    assert texts == {0: "4 stars", 1: "So: 5"}
    assert order[-1] == "usage" and order.index("finish 1") < order.index("finish 0")


def test_streamed_tail_precedes_the_finish_and_usage_chunks(rapport: Any, scripted_upstream: Any) -> None:
    # An unclosed reasoning block: nothing shows while it streams, its last line goes out when it ends.
    scripted_upstream.script(Reply(content="<reasoning>Seafood and cheap, so high.\nI would give it 4"))
    stream = _client(rapport).chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Rate: Harbor Shack, seafood, cheap."}],
        user=USER, stream=True, stream_options={"include_usage": True}, extra_body=_options(STAGES["rpm"]),
    )
    texts, order = _read_stream(stream)
    assert texts == {0: "I would give it 4"}
    assert order == ["content 0", "finish 0", "usage"]


def test_image_only_turn_retrieves_nothing_by_similarity(rapport: Any, scripted_upstream: Any) -> None:
    client = _client(rapport)
    image_only = [{"role": "user", "content": [IMAGE]}]
    result = client.chat.completions.create(
        model="test-model", messages=image_only, user=USER, extra_body=_options(STAGES["both"])
    )
    sent = scripted_upstream.requests[-1].json
    assert sent["messages"] == image_only, "nothing to add: no text to retrieve on, no summary yet"
    memory = _stage(result, "memory")["detail"]
    assert memory["skipped"] == "no text in the last user message"
    assert memory["items"] == 0 and memory["candidates"] == 0 and memory["tokens_added"] == 0
    assert _stage(result, "rpm")["detail"]["conditioned"] is False

    # A summary describes the user whatever the turn says, so it is still added (and reported).
    with admin(rapport) as a:
        summary = {"task": "general", "version": 1, "text": "Vegetarian; likes spicy food."}
        r = a.post(f"/admin/users/{USER}/import?tenant={TENANT}", json={"items": [], "summaries": [summary]})
        assert r.status_code == 201, r.text
    scripted_upstream.reset()
    result = client.chat.completions.create(
        model="test-model", messages=image_only, user=USER, extra_body=_options(STAGES["memory"])
    )
    sent = scripted_upstream.requests[-1].json["messages"]
    assert len(sent) == 2 and sent[1] == image_only[0]
    assert "likes spicy food" in sent[0]["content"] and PREFERENCE not in sent[0]["content"]
    memory = _stage(result, "memory")["detail"]
    assert memory["summary_version"] == 1 and memory["items"] == 0


def test_a_summary_over_the_budget_costs_no_items_and_is_not_reported(
    rapport: Any, scripted_upstream: Any
) -> None:
    foods = ["I cook lentil curry every Sunday.", "Tofu stir fry is my weeknight dinner.", "I grow chillies."]
    long_summary = "The user is vegetarian. " * 60  # ~360 tokens: over a 200-token budget on its own
    with admin(rapport) as a:
        r = a.post(
            f"/admin/users/{USER}/import?tenant={TENANT}",
            json={"items": [{"text": t} for t in foods], "summaries": [{"task": "general", "version": 1, "text": long_summary}]},
        )
        assert r.status_code == 201, r.text
        wait_until(lambda: _memory_count(a) == 4)
    client = _client(rapport)
    ask = [{"role": "user", "content": "What vegetarian dinner should I cook tonight?"}]
    result = client.chat.completions.create(
        model="test-model", messages=ask, user=USER,
        extra_body=_options({"memory": {"k": 4, "budget": 200}, "rpm": False}),
    )
    memory = _stage(result, "memory")["detail"]
    assert memory["summary_version"] is None and memory["summary_skipped"] == "does not fit the token budget"
    assert memory["items"] == 4, "k was not shrunk for a summary that was dropped"
    block = scripted_upstream.requests[-1].json["messages"][0]["content"]
    assert "The user is vegetarian." not in block and all(t in block for t in foods)

    # With room for it, the summary is in the block and k shrinks to a quarter for it.
    scripted_upstream.reset()
    result = client.chat.completions.create(
        model="test-model", messages=ask, user=USER,
        extra_body=_options({"memory": {"k": 4, "budget": 2000}, "rpm": False}),
    )
    memory = _stage(result, "memory")["detail"]
    assert memory["summary_version"] == 1 and memory["items"] == 1 and "summary_skipped" not in memory
    assert "The user is vegetarian." in scripted_upstream.requests[-1].json["messages"][0]["content"]


def test_completions_are_a_pass_through_even_for_a_named_user(rapport: Any, scripted_upstream: Any) -> None:
    result = _client(rapport).completions.create(
        model="test-model", prompt="Rate: Harbor Shack, a seafood restaurant, cheap.", user=USER, max_tokens=5
    )
    sent = scripted_upstream.requests[-1].json
    assert sent["prompt"] == "Rate: Harbor Shack, a seafood restaurant, cheap." and sent["user"] == USER
    assert result.choices[0].text == "completed: Rate: Harbor Shack, a seafood restaurant, cheap."
