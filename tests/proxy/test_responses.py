"""/v1/responses through the official openai SDK, with a named user and personalization on (issue 13, point 1).

The scripted upstream records the chat-completions request each Responses call was bridged to, so the tests
assert both sides: what reached the upstream (one leading system message, tools and formats translated,
the continued conversation) and what the client got (typed output items, usage, the `rapport` extension).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply, chunk, completion

MODEL = "test-model"


def client_for(rapport: Any, user: str | None = "alice", key: str | None = None) -> openai.OpenAI:
    headers = {"X-Rapport-User": user} if user else {}
    return openai.OpenAI(base_url=rapport.base_url, api_key=key or rapport.api_key, default_headers=headers, max_retries=0)


def chats(upstream: Any) -> list[dict[str, Any]]:
    return [r.json for r in upstream.requests if r.path.endswith("/chat/completions")]


def remember(rapport: Any, user: str, text: str) -> None:
    with admin(rapport) as http:
        def stored() -> bool:
            listing = http.get(f"/admin/users/{user}/memories", params={"tenant": "tenant-a"})
            return listing.status_code == 200 and any(text in m["text"] for m in listing.json()["data"])

        wait_until(stored, within=30)


def test_memory_personalizes_a_response_into_one_system_message(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    client = client_for(rapport)
    first = client.responses.create(model=MODEL, input="I am allergic to peanuts.")
    assert first.output_text == "echo: I am allergic to peanuts."
    assert first.id.startswith("resp_") and first.status == "completed"
    assert first.usage is not None and first.usage.input_tokens == 10 and first.usage.output_tokens == 5
    remember(rapport, "alice", "allergic to peanuts")

    scripted_upstream.requests.clear()
    second = client.responses.create(model=MODEL, instructions="You are a cook.", input="What should I cook tonight?")
    sent = chats(scripted_upstream)[-1]
    systems = [m for m in sent["messages"] if m["role"] in ("system", "developer")]
    assert len(systems) == 1 and sent["messages"][0] is not None and sent["messages"][0]["role"] == "system"
    assert systems[0]["content"].startswith("You are a cook.")
    assert "allergic to peanuts" in systems[0]["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "What should I cook tonight?"}
    assert sent["user"] == "alice" and "input" not in sent and "instructions" not in sent
    extension = second.model_extra["rapport"]  # type: ignore[index]
    memory = next(s for s in extension["stages"] if s["name"] == "memory")
    assert memory["ran"] and extension["user"] == "alice"


def test_previous_response_id_continues_and_ids_are_scoped(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    alice = client_for(rapport)
    first = alice.responses.create(model=MODEL, input=[{"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]}])
    scripted_upstream.requests.clear()
    second = alice.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)
    sent = chats(scripted_upstream)[-1]["messages"]
    turns = [(m["role"], m["content"]) for m in sent if m["role"] != "system"]
    assert turns == [("user", "My name is Ada."), ("assistant", "echo: My name is Ada."), ("user", "What is my name?")]
    assert second.previous_response_id == first.id

    fetched = alice.responses.retrieve(second.id)
    assert fetched.id == second.id and fetched.output_text == second.output_text
    # Another user of the tenant, another tenant, and an unnamed user do not see it.
    for other in (client_for(rapport, "bob"), client_for(rapport, "alice", key=rapport.api_key_b), client_for(rapport, None)):
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(second.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model=MODEL, input="again", previous_response_id=second.id)
    alice.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(second.id)
    # store=false keeps nothing.
    unstored = alice.responses.create(model=MODEL, input="do not keep", store=False)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(unstored.id)


def test_stream_has_typed_events_and_a_final_response(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    client = client_for(rapport)
    with client.responses.stream(model=MODEL, input="stream me") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "echo: stream me"
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and kinds.count("response.output_item.added") == 1
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert final.usage is not None and final.usage.total_tokens > 0
    assert final.model_extra["rapport"]["user"] == "alice"  # type: ignore[index]
    assert scripted_upstream.requests[-1].json["stream"] is True
    # A streamed response is stored like any other, and continues.
    assert client.responses.retrieve(final.id).output_text == "echo: stream me"


def test_function_tools_round_trip(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    client = client_for(rapport)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    scripted_upstream.script(Reply(body=completion("", MODEL, tool_calls=[call])))
    tools = [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=tools, tool_choice="auto")  # type: ignore[arg-type]
    sent = chats(scripted_upstream)[-1]
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": tools[0]["parameters"]}}]
    assert sent["tool_choice"] == "auto"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].call_id == "call_1" and json.loads(calls[0].arguments) == {"city": "Paris"}

    scripted_upstream.requests.clear()
    client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "18C and sunny"}],
        tools=tools,  # type: ignore[arg-type]
    )
    messages = chats(scripted_upstream)[-1]["messages"]
    assistant = next(m for m in messages if m["role"] == "assistant")
    assert assistant["tool_calls"] == [call]
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}


def test_streamed_function_call(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    events = [
        chunk(MODEL, {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": ""}}]}),
        chunk(MODEL, {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}),
        chunk(MODEL, {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}, finish="tool_calls"),
    ]
    scripted_upstream.script(Reply(kind="stream", events=events))
    with client_for(rapport).responses.stream(model=MODEL, input="look it up", tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]) as stream:  # type: ignore[list-item]
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    (item,) = final.output
    assert item.type == "function_call" and item.call_id == "call_9" and item.arguments == '{"q": "x"}'


def test_json_schema_format_reaches_the_upstream_as_response_format(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
    client_for(rapport).responses.create(
        model=MODEL, input="give json", text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}, max_output_tokens=50
    )
    sent = chats(scripted_upstream)[-1]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    assert sent["max_tokens"] == 50


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://169.254.169.254/"}]}, "tools[0].type"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"max_output_tokens": 10**9}, "max_output_tokens"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ],
)
def test_fields_rapport_cannot_honour_are_refused_by_name(make_rapport: Any, scripted_upstream: Any, extra: dict[str, Any], param: str) -> None:
    rapport = make_rapport()
    body = {"model": MODEL, "input": "hi", **extra}
    response = httpx.post(
        f"{rapport.base_url}/responses", json=body, headers={"authorization": f"Bearer {rapport.api_key}", "x-rapport-user": "alice"}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert chats(scripted_upstream) == []


def test_forget_removes_stored_responses_and_bound_keys_pin_the_user(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    alice = client_for(rapport)
    kept = alice.responses.create(model=MODEL, input="keep this")
    with admin(rapport) as http:
        assert http.delete("/admin/users/alice", params={"tenant": "tenant-a"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(kept.id)

    bound, _ = rapport.services.keys.create("carol", tenant="tenant-a", user="carol")
    carol = openai.OpenAI(base_url=rapport.base_url, api_key=bound, max_retries=0)
    mine = carol.responses.create(model=MODEL, input="carol's")
    assert carol.responses.retrieve(mine.id).id == mine.id
    with pytest.raises(openai.PermissionDeniedError):
        carol.responses.create(model=MODEL, input="as alice", user="alice")


def test_vas_reports_not_applied_on_responses(make_rapport: Any, scripted_upstream: Any) -> None:
    rapport = make_rapport()
    result = client_for(rapport).responses.create(model=MODEL, input="steer me", extra_body={"rapport": {"vas": True}})
    assert result.output_text == "echo: steer me"
    vas = next(s for s in result.model_extra["rapport"]["stages"] if s["name"] == "vas")  # type: ignore[index]
    assert vas["detail"]["applied"] is False


@pytest.mark.e2e
def test_responses_against_the_real_model(make_rapport: Any, smollm2_url: str) -> None:
    rapport = make_rapport(
        upstream_url=smollm2_url,
        model_list=[
            {"model_name": "smollm2", "litellm_params": {"model": "openai/smollm2", "api_base": smollm2_url, "api_key": "sk-local", "timeout": 120}}
        ],
    )
    client = client_for(rapport)
    question = "What is the capital of France?"
    # Neither is recorded, so both see the same prompt (a recorded first answer would be remembered into the second).
    keep_out = {"rapport": {"record": False}}
    result = client.responses.create(model="smollm2", input=question, max_output_tokens=24, temperature=0, extra_body=keep_out)
    assert result.output_text.strip() and result.usage is not None and result.usage.output_tokens > 0
    events = list(
        client.responses.create(model="smollm2", input=question, max_output_tokens=24, temperature=0, stream=True, extra_body=keep_out)
    )
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    # The last event carries the whole response: completed, or incomplete when max_output_tokens cut it.
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == result.status and deltas == final.output_text
    assert final.output_text.strip() == result.output_text.strip(), "greedy decoding: the same text streamed or not"
    follow = client.responses.create(model="smollm2", input="And of Italy?", previous_response_id=final.id, max_output_tokens=24, temperature=0)
    assert follow.output_text.strip() and follow.previous_response_id == final.id
