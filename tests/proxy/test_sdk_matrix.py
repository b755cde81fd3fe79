"""Every chat feature with every stage on, through the official openai SDK (issue 13, point 2).

The matrix: {sync, async client} x {chat, chat stream, responses, responses stream} x {tools with tool
results, json_schema, an image part, n = 2 (chat only), logprobs (chat only)} x {memory, RPM, VAS, all
three}, each call made for a named user, against one Rapport server (this module's) in front of a scripted
upstream that records what it received. The user has a stored memory and RPM history from module setup,
so memory and RPM both really add their blocks; when RPM is on, the scripted answers carry a
`<reasoning>` block, so removing it is exercised on every choice.

Asserted on what reached the upstream: one call (VAS did not steer), exactly one leading system message
holding the stages' blocks when memory or RPM ran and every other message as the client sent it, and the
client's tools, tool_choice, tool turns, response_format, image parts, n and logprobs intact. Asserted on
what the client got: the right choices with the scripted text (reasoning removed), tool calls and
log-probabilities as the upstream gave them, usage, and the `rapport` extension, where VAS says
`applied: false` and why.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from proxy.app import create_app
from rapport.core.messages import text_of
from reasoning.rpm.generate import REASONING_INSTRUCTION
from tests.conftest import ADMIN_KEY, API_KEY, rapport_settings
from tests.support.helpers import admin, wait_until
from tests.support.sdk_cases import (
    ANSWERS,
    CHAT_TOOLS,
    FEATURES,
    HISTORY,
    JSON_ANSWER,
    MEMORY_MARK,
    MODEL,
    NEW_CALLS,
    PLUGINS,
    PREFERENCE,
    QUESTION,
    SCHEMA,
    STAGE_SETS,
    SURFACES,
    TENANT,
    USER,
    chat_request,
    choice_count,
    completion_body,
    expected_text,
    responses_request,
    stream_events,
    tokens_of,
)
from tests.support.sdk_reader import ChunkReader, Got, call, from_completion
from tests.support.servers import ThreadedServer
from tests.support.upstream import Reply, ScriptedUpstream
from tests.vas.scripted_value import ScriptedValueServer, ValueScript

# -- the server, the user, one client per kind -------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    url: str
    admin_key: str
    upstream: ScriptedUpstream
    values: ScriptedValueServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    upstream = ScriptedUpstream().start()
    values = ScriptedValueServer().start()
    values.reset(ValueScript(liked=("Hello",)))
    settings = rapport_settings(
        tmp_path_factory.mktemp("sdk-matrix"),
        upstream.base_url,
        # Every stored item is a candidate: the user's one memory is always retrieved.
        memory={"summary_every": 1000, "min_similarity": -1.0},
        rpm={"construction_mode": "cheap", "request_mode": "cheap"},
        vas={"value_models": [{"name": "liked", "backend": "vllm", "url": values.url, "served_name": "v"}],
             "base_api": "chat_prefill", "beta": 50.0, "max_tokens": 16},
    )
    http = ThreadedServer(create_app(settings, PLUGINS), timeout_keep_alive=settings.server.timeout_keep_alive).start()
    handle = Server(f"{http.url}/v1", http.url, ADMIN_KEY, upstream, values)
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
        values.stop()
        upstream.stop()


@pytest.fixture()
def upstream(server: Server) -> Iterator[ScriptedUpstream]:
    server.upstream.reset()
    yield server.upstream
    server.upstream.reset()


@pytest.fixture(scope="module")
def sync_client(server: Server) -> Iterator[openai.OpenAI]:
    # The sync client names the user in the X-Rapport-User header, the async one in the body's `user`.
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60,
                           default_headers={"X-Rapport-User": USER})
    yield client
    client.close()


@pytest.fixture()
async def async_client(server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
    yield client
    await client.close()


# -- the matrix --------------------------------------------------------------------------------------------


def _cases() -> list[Any]:
    cases = []
    for kind in ("sync", "async"):
        for surface in SURFACES:
            for feature, spec in FEATURES.items():
                if spec.chat_only and not surface.startswith("chat"):
                    continue  # Responses has no n and no logprobs request field
                for stages in STAGE_SETS:
                    cases.append(pytest.param(kind, surface, feature, stages, id=f"{kind}-{surface}-{feature}-{stages}"))
    return cases


def _stage(got: Got, name: str) -> dict[str, Any] | None:
    assert got.rapport is not None
    return next((s for s in got.rapport["stages"] if s["name"] == name), None)


@pytest.mark.parametrize(("kind", "surface", "feature", "stages"), _cases())
async def test_feature_with_stages_through_the_sdk(
    kind: str, surface: str, feature: str, stages: str, upstream: ScriptedUpstream,
    sync_client: openai.OpenAI, async_client: openai.AsyncOpenAI,
) -> None:
    stage_options = STAGE_SETS[stages]
    memory_on, rpm_on, vas_on = (stage_options[n] is not False for n in ("memory", "rpm", "vas"))
    streamed = surface.endswith("stream")
    if streamed:
        upstream.script(Reply(kind="stream", events=stream_events(feature, rpm_on)))
    else:
        upstream.script(Reply(body=completion_body(feature, rpm_on)))

    got = await call(kind, async_client if kind == "async" else sync_client, surface, feature, stage_options)

    # -- what reached the upstream: one plain call, the client's request with one leading system message --
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions"], "one plain upstream call (VAS did not steer)"
    sent = upstream.requests[0].json
    assert "rapport" not in sent and sent["user"] == USER and sent["model"] == "scripted"
    if surface.startswith("chat"):
        client_request = chat_request(feature)
        for name, value in client_request.items():
            if name != "messages":
                assert sent[name] == value, f"{name} reached the upstream changed"
        if streamed:
            assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        client_messages = client_request["messages"]
    else:
        _, client_messages = responses_request(feature)
        check_bridged_fields(feature, sent, streamed)
    check_messages(sent["messages"], client_messages, memory_on, rpm_on)

    # -- what the client got ----------------------------------------------------------------------------
    count = choice_count(feature)
    assert sorted(got.texts) == list(range(count)), f"choices: {got.texts}"
    for i in range(count):
        text = got.texts[i]
        assert text is None or "reasoning>" not in text.lower(), f"reasoning in choice {i}: {text!r}"
        wanted = expected_text(i, feature)
        if wanted is None:
            assert not text, f"a tool-call answer shows no text, got {text!r}"
        else:
            assert text == wanted, f"choice {i}"
        if feature == "json_schema":
            assert json.loads(text or "") == JSON_ANSWER
    if feature == "tools":
        assert got.calls[0] == [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in NEW_CALLS]
    else:
        assert all(not calls for calls in got.calls.values())
    if feature == "logprobs":
        # The upstream's log-probabilities reach the client for the text it shows: with RPM's reasoning
        # removed from the content, its tokens are removed from the log-probabilities too.
        assert got.logprobs[0] == tokens_of(ANSWERS[0]), "the shown answer's tokens, no more, no fewer"
    if surface.startswith("chat"):
        finish = "tool_calls" if feature == "tools" else "stop"
        assert got.finish == {i: finish for i in range(count)}
    else:
        assert got.finish == {0: "completed"}
    assert got.usage is not None
    if surface.startswith("chat"):
        assert (got.usage["prompt_tokens"], got.usage["completion_tokens"], got.usage["total_tokens"]) == (31, 7, 38)
    else:
        assert (got.usage["input_tokens"], got.usage["output_tokens"], got.usage["total_tokens"]) == (31, 7, 38)

    # -- the rapport extension: which stages ran and what they did ------------------------------------
    assert got.rapport is not None and got.rapport["user"] == USER and got.rapport["degraded"] == []
    memory, rpm, vas = _stage(got, "memory"), _stage(got, "rpm"), _stage(got, "vas")
    assert (memory is not None, rpm is not None, vas is not None) == (memory_on, rpm_on, vas_on)
    if memory is not None:
        assert memory["ran"] and memory["detail"]["items"] == 1, memory
    if rpm is not None:
        assert rpm["ran"] and rpm["detail"]["conditioned"] is True, rpm
    if vas is not None:
        assert vas["ran"] and vas["detail"]["applied"] is False, vas
        reason = vas["detail"]["reason"]
        wanted_reason = FEATURES[feature].vas_reason if surface.startswith("chat") else "responses"
        assert wanted_reason in reason, f"VAS's reason {reason!r} names {wanted_reason!r}"


def check_messages(sent: list[dict[str, Any]], client: list[dict[str, Any]], memory_on: bool, rpm_on: bool) -> None:
    """The client's messages, with the stages' blocks in one leading system message and nothing else changed."""
    leading = [m for m in sent if m.get("role") in ("system", "developer")]
    client_lead = client[0] if client and client[0]["role"] in ("system", "developer") else None
    if not (memory_on or rpm_on):
        assert sent == client, "with only VAS on (and not applied) the messages are the client's"
        return
    assert len(leading) == 1 and sent[0] is leading[0], "exactly one leading system message"
    assert sent[1:] == (client[1:] if client_lead else client), "every other message as the client sent it"
    first = sent[0]
    if client_lead is None:
        assert first["role"] == "system" and isinstance(first["content"], str)
        added = first["content"]
    else:
        assert first["role"] == client_lead["role"]
        original = client_lead["content"]
        if isinstance(original, str):
            assert first["content"].startswith(original + "\n\n")
            added = first["content"][len(original) :]
        else:
            assert first["content"][: len(original)] == original
            extra = first["content"][len(original) :]
            assert extra and all(p["type"] == "text" for p in extra)
            added = "\n".join(p["text"] for p in extra)
    assert (MEMORY_MARK in added and PREFERENCE in added) is memory_on, added
    assert (REASONING_INSTRUCTION in added) is rpm_on, added
    assert json.dumps(sent).count(MEMORY_MARK) == int(memory_on), "memory's block is added once"
    assert json.dumps(sent).count(REASONING_INSTRUCTION) == int(rpm_on), "RPM's block is added once"


def check_bridged_fields(feature: str, sent: dict[str, Any], streamed: bool) -> None:
    """A Responses request's features as chat fields upstream."""
    if feature == "tools":
        assert sent["tools"] == CHAT_TOOLS and sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is True
    else:
        assert "tools" not in sent and "tool_choice" not in sent
    if feature == "json_schema":
        assert sent["response_format"] == {"type": "json_schema", "json_schema": SCHEMA}
    else:
        assert "response_format" not in sent
    assert "n" not in sent and "logprobs" not in sent
    if streamed:
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    else:
        assert "stream" not in sent


def _leading(messages: list[dict[str, Any]]) -> str:
    return text_of(messages[0]["content"]) if messages and messages[0]["role"] in ("system", "developer") else ""


# The module's server is the same for the controls below: VAS really is up in it, and steers a plain request.


def step(*tokens: tuple[str, float], finish: str = "length") -> Reply:
    """One VAS token step: the upstream's answer to a `max_tokens=1, top_logprobs=k` call."""
    greedy = max(tokens, key=lambda t: t[1])
    top = [{"token": t, "logprob": lp} for t, lp in tokens]
    return Reply(body={
        "id": "chatcmpl-step", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": greedy[0]},
                     "logprobs": {"content": [{"token": greedy[0], "logprob": greedy[1], "top_logprobs": top}]},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41},
    })


@pytest.mark.parametrize("streamed", [False, True], ids=["non-stream", "stream"])
def test_vas_steers_a_plain_request_with_every_stage_on(
    streamed: bool, upstream: ScriptedUpstream, sync_client: openai.OpenAI
) -> None:
    """The control of the matrix: the same server, a text-only request, all three stages: VAS applies, on
    the personalized prompt, and RPM's reasoning is kept out of the steered answer."""
    upstream.script(step(("<reasoning>", 0.0)), step(("Seafood.</reasoning>", 0.0)), step(("Hi", -0.1), ("Hello", -2.0)),
                    step(("<|im_end|>", 0.0)))
    kwargs: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                              "extra_body": {"rapport": {**STAGE_SETS["all"], "record": False}}}
    if streamed:
        reader = ChunkReader()
        for part in sync_client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}):
            reader.feed(part)
        got = reader.done()
    else:
        got = from_completion(sync_client.chat.completions.create(**kwargs))
    assert got.texts == {0: "Hello"} and got.finish == {0: "stop"}
    assert got.usage is not None and got.usage["prompt_tokens"] == 40 and got.usage["completion_tokens"] == 4
    vas = _stage(got, "vas")
    assert vas is not None and vas["detail"]["applied"] is True
    sent = [r.json for r in upstream.requests]
    assert len(sent) == 4 and all(r["top_logprobs"] == 5 and r["max_tokens"] == 1 for r in sent)
    # VAS decodes from the personalized prompt: the one system message memory and RPM built.
    system = _leading(sent[0]["messages"])
    assert PREFERENCE in system and REASONING_INSTRUCTION in system
    assert [m["role"] for m in sent[0]["messages"]] == ["system", "user"]


@pytest.mark.parametrize("stages", ["rpm", "all"])
def test_usage_on_every_chunk_leaves_each_choices_filter_running(
    stages: str, upstream: ScriptedUpstream, sync_client: openai.OpenAI
) -> None:
    """A server asked for usage on every chunk (vLLM's `stream_options.continuous_usage_stats`, which the
    client may ask for) sends it beside content: only the final usage chunk, the one without choices, ends
    the choices' filters. Before, every chunk with usage flushed them, so each choice's held-back partial tag
    and the rest of its reasoning went out as text."""
    events = stream_events("n2", rpm=True)
    for count, event in enumerate(events[:-1], start=1):
        event["usage"] = {"prompt_tokens": 31, "completion_tokens": count, "total_tokens": 31 + count}
    upstream.script(Reply(kind="stream", events=events))
    options = {"include_usage": True, "continuous_usage_stats": True}
    reader = ChunkReader()
    for part in sync_client.chat.completions.create(
        model=MODEL, **chat_request("n2"), stream=True, stream_options=options,  # type: ignore[arg-type]
        extra_body={"rapport": {**STAGE_SETS[stages], "record": False}},
    ):
        reader.feed(part)
    got = reader.done()
    assert upstream.requests[0].json["stream_options"] == options
    assert got.texts == {0: ANSWERS[0], 1: ANSWERS[1]} and got.finish == {0: "stop", 1: "stop"}
    assert got.usage is not None and got.usage["total_tokens"] == 38
