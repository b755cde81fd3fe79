"""/v1/responses passed through to an upstream that speaks Responses (`responses: passthrough`), issue 13 point 1.

Through the official openai SDK, sync and async, for a named user with memory and RPM really adding their
blocks (a stored memory and an RPM history from module setup), against a scripted upstream that serves
/v1/responses and records what it received. Asserted upstream: one Responses call, `store: false`, one
`instructions` holding the client's instructions and both stages' blocks, the conversation expanded in
`input` (no previous_response_id); asserted on the client: Rapport's ids (response and items), RPM's
reasoning out of the text (streamed too), the upstream's usage, GET of the id, and that another user's or
tenant's id is a 404. Failures: an upstream 500 or 400 maps to the status chat gives it, a stream cut
mid-way ends with an error event and stores nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from proxy.app import create_app
from proxy.entrypoints.responses.passthrough import VAS_REASON
from proxy.services import Services
from reasoning.rpm.generate import REASONING_INSTRUCTION
from tests.conftest import ADMIN_KEY, API_KEY, API_KEY_B, rapport_settings
from tests.support.helpers import admin, wait_until
from tests.support.sdk_cases import HISTORY, MEMORY_MARK, PLUGINS, PREFERENCE, QUESTION, REASONING, TENANT
from tests.support.servers import ThreadedServer
from tests.support.upstream import (
    RESPONSES_USAGE,
    Reply,
    ScriptedUpstream,
    output_call,
    output_message,
    response_object,
    responses_events,
)

MODEL = "pt-model"
USER = "pt-user"
ANSWER = "Harbor Shack: 4 stars."
# Both stages on for every call: memory adds the stored preference, RPM its reasoning instruction.
STAGES = {"rapport": {"memory": True, "rpm": {"mode": "cheap"}}}


def passthrough_entry(url: str, name: str = MODEL) -> dict[str, Any]:
    return {"model_name": name, "responses": "passthrough",
            "litellm_params": {"model": "openai/scripted", "api_base": url, "api_key": "sk-up", "timeout": 30}}


@dataclass
class Server:
    base_url: str
    url: str
    admin_key: str
    upstream: ScriptedUpstream
    services: Services


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    upstream = ScriptedUpstream().start()
    settings = rapport_settings(
        tmp_path_factory.mktemp("passthrough"),
        upstream.base_url,
        model_list=[passthrough_entry(upstream.base_url),
                    {"model_name": "chat-model", "litellm_params": {"model": "openai/scripted", "api_base": upstream.base_url,
                                                                     "api_key": "sk-up", "timeout": 30}}],
        # Every stored item is a candidate: the user's memory is always retrieved.
        memory={"summary_every": 1000, "min_similarity": -1.0},
        rpm={"construction_mode": "cheap", "request_mode": "cheap"},
    )
    app = create_app(settings, PLUGINS)
    http = ThreadedServer(app, timeout_keep_alive=settings.server.timeout_keep_alive).start()
    handle = Server(f"{http.url}/v1", http.url, ADMIN_KEY, upstream, app.state.services)
    try:
        with admin(handle) as client:
            r = client.post(f"/admin/users/{USER}/memories?tenant={TENANT}", json={"text": PREFERENCE})
            assert r.status_code == 201, r.text
            r = client.post(f"/admin/users/{USER}/history?tenant={TENANT}", json={"items": HISTORY})
            assert r.status_code == 201, r.text
            wait_until(lambda: len(client.get(f"/admin/users/{USER}/memories?tenant={TENANT}").json()["data"]) == 1)
            wait_until(lambda: client.get(f"/admin/users/{USER}/rpm?tenant={TENANT}").json()["entries"] == {"done": 3})
        yield handle
    finally:
        http.stop()
        upstream.stop()


@pytest.fixture()
def upstream(server: Server) -> Iterator[ScriptedUpstream]:
    server.upstream.reset()
    yield server.upstream
    server.upstream.reset()


def sync_client(server: Server, user: str | None = USER, key: str = API_KEY) -> openai.OpenAI:
    headers = {"X-Rapport-User": user} if user else {}
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60, default_headers=headers)


@pytest.fixture()
async def async_client(server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    # The async client names the user in the body's `user`, the sync one in the X-Rapport-User header.
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
    yield client
    await client.close()


async def create(kind: str, server: Server, aclient: openai.AsyncOpenAI, **request: Any) -> Any:
    if kind == "async":
        return await aclient.responses.create(user=USER, **request)
    with sync_client(server) as client:
        return client.responses.create(**request)


async def stream(kind: str, server: Server, aclient: openai.AsyncOpenAI, **request: Any) -> tuple[list[Any], Any]:
    """Every event of a streamed response, and the SDK's final response."""
    if kind == "async":
        async with aclient.responses.stream(user=USER, **request) as events:
            got = [event async for event in events]
            return got, await events.get_final_response()
    with sync_client(server) as client, client.responses.stream(**request) as sync_events:
        got = list(sync_events)
        return got, sync_events.get_final_response()


def only_call(upstream: ScriptedUpstream) -> dict[str, Any]:
    assert [r.path for r in upstream.requests] == ["/v1/responses"], "one Responses call, no chat call"
    return upstream.requests[0].json


def check_instructions(sent: dict[str, Any], client_instructions: str | None) -> None:
    """One instructions block: the client's own first, then memory's and RPM's blocks, each once."""
    instructions = sent["instructions"]
    if client_instructions is not None:
        assert instructions.startswith(client_instructions + "\n\n")
    assert MEMORY_MARK in instructions and PREFERENCE in instructions and REASONING_INSTRUCTION in instructions
    rest = json.dumps({k: v for k, v in sent.items() if k != "instructions"})
    assert MEMORY_MARK not in rest and REASONING_INSTRUCTION not in rest, "the blocks are in instructions only"
    assert all(item.get("role") not in ("system", "developer") for item in sent["input"])


def check_stages(response: Any) -> None:
    extension = response.model_extra["rapport"]
    assert extension["user"] == USER
    stages = {s["name"]: s for s in extension["stages"]}
    assert stages["memory"]["ran"] and stages["memory"]["detail"]["items"] >= 1
    assert stages["rpm"]["ran"] and stages["rpm"]["detail"]["conditioned"] is True


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
async def test_passthrough_personalizes_into_instructions_and_owns_the_ids(
    kind: str, server: Server, upstream: ScriptedUpstream, async_client: openai.AsyncOpenAI
) -> None:
    upstream.script(Reply(body=response_object([output_message(REASONING + ANSWER)], "scripted")))
    result = await create(kind, server, async_client, model=MODEL, instructions="You are a food critic.", input=QUESTION,
                          max_output_tokens=64, temperature=0.2, extra_body=STAGES)

    sent = only_call(upstream)
    assert sent["store"] is False and "previous_response_id" not in sent and "rapport" not in sent
    assert sent["model"] == "scripted" and sent["user"] == USER
    assert sent["max_output_tokens"] == 64 and sent["temperature"] == 0.2 and "stream" not in sent
    assert sent["input"] == [{"type": "message", "role": "user", "content": QUESTION}]
    check_instructions(sent, "You are a food critic.")

    assert result.output_text == ANSWER, "RPM's reasoning is kept out of the answer"
    assert result.id.startswith("resp_") and result.id != "resp_upstream_1"
    (item,) = result.output
    assert item.type == "message" and item.id.startswith("msg_") and item.id != "msg_upstream_1"
    assert result.usage is not None and result.usage.model_dump(exclude_none=True) == RESPONSES_USAGE
    # The response echoes the client's request, not what Rapport sent upstream.
    assert result.instructions == "You are a food critic." and result.store is True and result.status == "completed"
    check_stages(result)

    fetched = sync_client(server).responses.retrieve(result.id)
    assert fetched.id == result.id and fetched.output_text == ANSWER and fetched.output[0].id == item.id


@KINDS
async def test_passthrough_stream_rewrites_ids_and_strips_reasoning(
    kind: str, server: Server, upstream: ScriptedUpstream, async_client: openai.AsyncOpenAI
) -> None:
    text = REASONING + ANSWER
    # Small pieces, so RPM's tags are split across deltas as a real stream splits them.
    upstream.script(Reply(kind="stream", events=responses_events(text, "scripted", [text[i : i + 5] for i in range(0, len(text), 5)])))
    events, final = await stream(kind, server, async_client, model=MODEL, input=QUESTION, extra_body=STAGES)

    sent = only_call(upstream)
    assert sent["stream"] is True and sent["store"] is False
    check_instructions(sent, None)

    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events))), "numbered in order, no gaps"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    shown = json.dumps([e.model_dump() for e in events])
    assert deltas == ANSWER and "<reasoning>" not in shown and "They rate seafood" not in shown
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == ANSWER
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")} | {e.item.id for e in events if hasattr(e, "item")}
    assert len(item_ids) == 1 and next(iter(item_ids)).startswith("msg_") and "msg_upstream_1" not in item_ids
    response_ids = {e.response.id for e in events if hasattr(e, "response")}
    assert response_ids == {final.id} and final.id.startswith("resp_") and final.id != "resp_upstream_1"

    assert final.output_text == ANSWER and final.output[0].id in item_ids
    assert final.usage is not None and final.usage.model_dump(exclude_none=True) == RESPONSES_USAGE
    check_stages(final)
    fetched = sync_client(server).responses.retrieve(final.id)
    assert fetched.output_text == ANSWER and fetched.output[0].id == final.output[0].id


def test_previous_response_id_and_function_calls_are_expanded_into_input(
    server: Server, upstream: ScriptedUpstream
) -> None:
    client = sync_client(server)
    first = client.responses.create(model=MODEL, input="My name is Ada.", extra_body=STAGES)
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id, extra_body=STAGES)
    sent = upstream.requests[-1].json
    assert "previous_response_id" not in sent and sent["store"] is False
    assert sent["input"] == [
        {"type": "message", "role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant", "content": "echo: My name is Ada."},
        {"type": "message", "role": "user", "content": "What is my name?"},
    ]
    check_instructions(sent, None)
    assert second.previous_response_id == first.id

    # A function call answered, then its output sent back: both reach the upstream as items, call id kept.
    tools = [{"type": "function", "name": "get_menu", "parameters": {"type": "object", "properties": {}}}]
    upstream.script(Reply(body=response_object([output_call("call_up_7", "get_menu", '{"place": "Harbor"}')], "scripted")))
    asked = client.responses.create(model=MODEL, input="What is on the menu?", previous_response_id=second.id,
                                    tools=tools, tool_choice="auto", extra_body=STAGES)  # type: ignore[call-overload]
    (call,) = asked.output
    assert call.type == "function_call" and call.call_id == "call_up_7" and call.id != "fc_upstream_1"
    assert call.id.startswith("fc_")
    upstream.requests.clear()
    client.responses.create(model=MODEL, previous_response_id=asked.id, tools=tools, extra_body=STAGES,  # type: ignore[arg-type]
                            input=[{"type": "function_call_output", "call_id": "call_up_7", "output": "grilled fish"}])
    sent = only_call(upstream)
    assert sent["tools"] == tools
    assert sent["input"][-3:] == [
        {"type": "message", "role": "user", "content": "What is on the menu?"},
        {"type": "function_call", "call_id": "call_up_7", "name": "get_menu", "arguments": '{"place": "Harbor"}'},
        {"type": "function_call_output", "call_id": "call_up_7", "output": "grilled fish"},
    ]
    assert len(sent["input"]) == 7 and all("id" not in item for item in sent["input"]), "no ids the upstream never stored"


def test_ids_are_scoped_to_the_user_and_tenant(server: Server, upstream: ScriptedUpstream) -> None:
    mine = sync_client(server).responses.create(model=MODEL, input="private", extra_body=STAGES)
    for other in (sync_client(server, "bob"), sync_client(server, USER, key=API_KEY_B), sync_client(server, None)):
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model=MODEL, input="again", previous_response_id=mine.id)
    assert len(upstream.requests) == 1, "a refused continuation never reaches the upstream"
    sync_client(server).responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        sync_client(server).responses.retrieve(mine.id)


@pytest.mark.parametrize("status", [500, 400])
@pytest.mark.parametrize("streamed", [False, True], ids=["non-stream", "stream"])
def test_upstream_failures_map_like_chat(server: Server, upstream: ScriptedUpstream, status: int, streamed: bool) -> None:
    def failure(call: Any) -> openai.APIStatusError:
        # As many failures as the router tries (retries + 1), for each surface in turn.
        upstream.reset()
        upstream.script(*[Reply(kind="error", status=status)] * 3)
        with pytest.raises(openai.APIStatusError) as raised:
            call()
        return raised.value

    client = sync_client(server)
    chat = failure(lambda: client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "hi"}], stream=streamed))
    passed = failure(lambda: client.responses.create(model=MODEL, input="hi", stream=streamed, extra_body=STAGES))
    assert {r.path for r in upstream.requests} == {"/v1/responses"}
    assert passed.status_code == chat.status_code == (502 if status == 500 else 400)
    assert passed.body == chat.body or (passed.body["code"] == chat.body["code"])  # type: ignore[index]


def _broken_stream(how: str) -> Reply:
    events = responses_events(ANSWER, "scripted")
    if how == "cut":
        return Reply(kind="cut_stream", cut_after=6)  # the connection drops after a few deltas
    if how == "error-event":
        return Reply(kind="stream", events=[*events[:6], {"type": "error", "code": "server_error", "message": "upstream broke", "sequence_number": 6}])
    failed = {**response_object([], "scripted", status="failed"), "error": {"code": "server_error", "message": "upstream broke"}}
    return Reply(kind="stream", events=[*events[:6], {"type": "response.failed", "response": failed, "sequence_number": 6}])


@pytest.mark.parametrize("how", ["cut", "error-event", "failed-event"])
def test_stream_broken_midway_ends_with_an_error_event_and_stores_nothing(server: Server, upstream: ScriptedUpstream, how: str) -> None:
    upstream.script(_broken_stream(how))
    seen: list[Any] = []
    with pytest.raises(openai.APIError, match="upstream"):
        with sync_client(server).responses.stream(model=MODEL, input=QUESTION, extra_body=STAGES) as events:
            for event in events:
                seen.append(event)
    assert [e.type for e in seen][:2] == ["response.created", "response.in_progress"]
    assert "response.completed" not in [e.type for e in seen]
    with pytest.raises(openai.NotFoundError):
        sync_client(server).responses.retrieve(seen[0].response.id)


@pytest.mark.parametrize("streamed", [False, True], ids=["non-stream", "stream"])
def test_an_answer_cut_by_max_output_tokens_is_incomplete(server: Server, upstream: ScriptedUpstream, streamed: bool) -> None:
    cut = response_object([output_message("Harbor Shack: 4")], "scripted", status="incomplete", incomplete="max_output_tokens")
    if streamed:
        events = responses_events("Harbor Shack: 4", "scripted")
        events[-1] = {"type": "response.incomplete", "response": cut, "sequence_number": events[-1]["sequence_number"]}
        upstream.script(Reply(kind="stream", events=events))
        got = list(sync_client(server).responses.create(model=MODEL, input=QUESTION, max_output_tokens=5, stream=True, extra_body=STAGES))
        # The last event carries the whole response (the SDK's stream helper waits for a completed one only).
        assert got[-1].type == "response.incomplete"
        result: Any = got[-1].response  # type: ignore[union-attr]
    else:
        upstream.script(Reply(body=cut))
        result = sync_client(server).responses.create(model=MODEL, input=QUESTION, max_output_tokens=5, extra_body=STAGES)
    assert only_call(upstream)["max_output_tokens"] == 5
    assert result.status == "incomplete" and result.incomplete_details is not None
    assert result.incomplete_details.reason == "max_output_tokens" and result.output_text == "Harbor Shack: 4"


def test_same_admission_caps_refusals_and_bound_keys(server: Server, upstream: ScriptedUpstream) -> None:
    headers = {"authorization": f"Bearer {API_KEY}", "x-rapport-user": USER}
    for extra, param in (
        ({"background": True}, "background"),
        ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "http://169.254.169.254/"}]}, "tools[0].type"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"max_output_tokens": 10**9}, "max_output_tokens"),
        ({"input": [{"type": "item_reference", "id": "msg_x"}]}, "input[0].type"),
    ):
        r = httpx.post(f"{server.base_url}/responses", json={"model": MODEL, "input": "hi", **extra}, headers=headers, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert upstream.requests == []

    bound, _ = server.services.keys.create("carol-key", tenant=TENANT, user="carol")
    carol = openai.OpenAI(base_url=server.base_url, api_key=bound, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        carol.responses.create(model=MODEL, input="as someone else", user="alice")
    assert upstream.requests == []
    mine = carol.responses.create(model=MODEL, input="as myself")
    assert only_call(upstream)["user"] == "carol" and carol.responses.retrieve(mine.id).id == mine.id


def test_vas_on_a_passthrough_request_is_not_applied_with_a_reason(server: Server, upstream: ScriptedUpstream) -> None:
    result = sync_client(server).responses.create(model=MODEL, input="steer me", extra_body={"rapport": {"vas": True}})
    assert result.output_text == "echo: steer me"
    vas = next(s for s in result.model_extra["rapport"]["stages"] if s["name"] == "vas")  # type: ignore[index]
    assert vas["detail"]["applied"] is False and vas["detail"]["reason"] == VAS_REASON


@pytest.mark.parametrize("upstream_settings", [{"fast_path": False}, {"transport": "httpx"}], ids=["litellm", "httpx"])
def test_other_transports_pass_through(make_rapport: Any, scripted_upstream: ScriptedUpstream, upstream_settings: dict[str, Any]) -> None:
    """litellm's aresponses (deployments off the fast path) and the httpx transport pass through alike."""
    rapport = make_rapport(plugins=(), upstream=upstream_settings, model_list=[passthrough_entry(scripted_upstream.base_url)])
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key, max_retries=0, default_headers={"X-Rapport-User": "dana"})
    result = client.responses.create(model=MODEL, instructions="Be brief.", input="hello")
    sent = only_call(scripted_upstream)
    assert sent["store"] is False and sent["instructions"] == "Be brief." and sent["user"] == "dana"
    assert result.output_text == "echo: hello" and result.id != "resp_upstream_1" and result.output[0].id != "msg_upstream_1"
    with client.responses.stream(model=MODEL, input="stream me", previous_response_id=result.id) as events:
        kinds = [e.type for e in events]
        final = events.get_final_response()
    assert kinds[-1] == "response.completed" and final.output_text == "echo: stream me"
    assert scripted_upstream.requests[-1].json["input"][1] == {"type": "message", "role": "assistant", "content": "echo: hello"}
    assert client.responses.retrieve(final.id).output_text == "echo: stream me"
