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

import copy
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from proxy.app import create_app
from proxy.entrypoints.chat.choice_filters import ChoiceFilters
from proxy.entrypoints.chat.shown_logprobs import trim_message_logprobs
from rapport.core.messages import text_of
from reasoning.rpm.generate import REASONING_INSTRUCTION, ReasoningStreamFilter, strip_reasoning
from tests.conftest import ADMIN_KEY, API_KEY, rapport_settings
from tests.support.helpers import admin, wait_until
from tests.support.servers import ThreadedServer
from tests.support.upstream import Reply, ScriptedUpstream
from tests.vas.scripted_value import ScriptedValueServer, ValueScript

TENANT = "tenant-a"  # the tenant of the test API key
USER = "matrix-user"
MODEL = "test-model"
PLUGINS = ("proxy.stages.memory_plugin:build", "proxy.stages.rpm_plugin:build", "proxy.stages.vas_plugin:build")
MEMORY_MARK = "<user_memory>"
PREFERENCE = "I am strictly vegetarian and I love spicy food."
HISTORY = [
    {"input": "Rate: Blue Fin, a seafood restaurant, expensive.", "response": "5", "task": "rating"},
    {"input": "Rate: Green Leaf, a vegan restaurant, cheap.", "response": "2", "task": "rating"},
    {"input": "Rate: Pearl, a seafood restaurant, cheap.", "response": "4", "task": "rating"},
]
QUESTION = "Rate: Harbor Shack, a seafood restaurant, cheap. What should I eat there?"
REASONING = "<reasoning>They rate seafood high, and cheap places too.</reasoning>\n"
ANSWERS = ("Harbor Shack: 4 stars.", "Harbor Shack: 5 stars.")
JSON_ANSWER = {"stars": 4}
USAGE = {"prompt_tokens": 31, "completion_tokens": 7, "total_tokens": 38}

# -- what the client sends ---------------------------------------------------------------------------------

IMAGE_URL = "data:image/png;base64,iVBORw0KGgo="
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_menu", "description": "A restaurant's menu",
                                      "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_reviews",
                                      "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}}},
]
RESPONSES_TOOLS = [
    {"type": "function", "name": "get_menu", "description": "A restaurant's menu",
     "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}},
    {"type": "function", "name": "get_reviews",
     "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}},
]
EARLIER_CALL = {"id": "call_menu", "type": "function", "function": {"name": "get_menu", "arguments": '{"place": "Harbor"}'}}
TOOL_RESULT = '{"dishes": ["grilled fish", "chilli tofu"]}'
# The upstream's answer to a tool request: two parallel calls.
NEW_CALLS = [
    {"id": "call_a", "type": "function", "function": {"name": "get_reviews", "arguments": '{"place": "Harbor"}'}},
    {"id": "call_b", "type": "function", "function": {"name": "get_menu", "arguments": '{"place": "Pier 9"}'}},
]
SCHEMA = {"name": "rating", "schema": {"type": "object", "properties": {"stars": {"type": "integer"}},
                                       "required": ["stars"], "additionalProperties": False}, "strict": True}
TOP_LOGPROBS = 2


def tokens_of(text: str) -> list[str]:
    """A tokenizer's split of `text` (words with their leading space, punctuation and newlines on their own):
    a tag such as `<reasoning>` spans three tokens, as it does for real tokenizers."""
    found = re.findall(r"[ ]?\w+|\s|[^\w\s]", text)
    assert "".join(found) == text
    return found


def logprob_entries(text: str) -> list[dict[str, Any]]:
    """Scripted per-token log-probabilities of `text`, as an upstream returns them (tokens add up to it)."""
    return [
        {"token": t, "logprob": -0.25 * (i % 5), "bytes": list(t.encode()),
         "top_logprobs": [{"token": t, "logprob": -0.25 * (i % 5), "bytes": list(t.encode())},
                          {"token": "x", "logprob": -9.0, "bytes": [120]}][:TOP_LOGPROBS]}
        for i, t in enumerate(tokens_of(text))
    ]


@dataclass(frozen=True)
class Feature:
    """One chat feature: what the client sends for it on each surface and how VAS's refusal names it."""

    name: str
    chat_only: bool
    vas_reason: str


FEATURES = {
    "tools": Feature("tools", False, "tools"),
    "json_schema": Feature("json_schema", False, "response_format"),
    "image": Feature("image", False, "non-text"),
    "n2": Feature("n2", True, "n=2"),
    "logprobs": Feature("logprobs", True, "logprobs"),
}
STAGE_SETS: dict[str, dict[str, Any]] = {
    "memory": {"memory": True, "rpm": False, "vas": False},
    "rpm": {"memory": False, "rpm": {"mode": "cheap"}, "vas": False},
    "vas": {"memory": False, "rpm": False, "vas": {"top_k": 5}},
    "all": {"memory": True, "rpm": {"mode": "cheap"}, "vas": {"top_k": 5}},
}
SURFACES = ("chat", "chat-stream", "responses", "responses-stream")


def chat_request(feature: str) -> dict[str, Any]:
    """The chat request for a feature (a leading system message in three shapes, or none)."""
    if feature == "tools":
        messages = [
            {"role": "system", "content": "You are a food critic with tools."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": None, "tool_calls": [EARLIER_CALL]},
            {"role": "tool", "tool_call_id": "call_menu", "content": TOOL_RESULT},
        ]
        return {"messages": messages, "tools": CHAT_TOOLS, "tool_choice": "auto", "parallel_tool_calls": True}
    if feature == "json_schema":
        messages = [{"role": "developer", "content": "Answer in JSON."}, {"role": "user", "content": QUESTION}]
        return {"messages": messages, "response_format": {"type": "json_schema", "json_schema": SCHEMA}}
    if feature == "image":
        parts = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": IMAGE_URL}}]
        messages = [{"role": "system", "content": [{"type": "text", "text": "You see images."}]},
                    {"role": "user", "content": parts}]
        return {"messages": messages}
    if feature == "n2":
        return {"messages": [{"role": "user", "content": QUESTION}], "n": 2}
    assert feature == "logprobs"
    return {"messages": [{"role": "user", "content": QUESTION}], "logprobs": True, "top_logprobs": TOP_LOGPROBS}


def responses_request(feature: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Responses request for a feature, and the chat messages it must bridge to (before any stage)."""
    if feature == "tools":
        request = {
            "instructions": "You are a food critic with tools.",
            "input": [
                {"role": "user", "content": QUESTION},
                {"type": "function_call", "call_id": "call_menu", "name": "get_menu", "arguments": '{"place": "Harbor"}'},
                {"type": "function_call_output", "call_id": "call_menu", "output": TOOL_RESULT},
            ],
            "tools": RESPONSES_TOOLS, "tool_choice": "auto", "parallel_tool_calls": True,
        }
        return request, chat_request("tools")["messages"]
    if feature == "json_schema":
        request = {"instructions": "Answer in JSON.", "input": QUESTION,
                   "text": {"format": {"type": "json_schema", **SCHEMA}}}
        return request, [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": QUESTION}]
    assert feature == "image"
    request = {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": QUESTION}, {"type": "input_image", "image_url": IMAGE_URL, "detail": "auto"}]}]}
    parts = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "auto"}}]
    return request, [{"role": "user", "content": parts}]


# -- what the upstream answers -----------------------------------------------------------------------------


def _text(i: int, feature: str, rpm: bool) -> str:
    """Choice i's content as the upstream writes it (with RPM's reasoning block when RPM asked for one)."""
    answer = json.dumps(JSON_ANSWER) if feature == "json_schema" else ANSWERS[i]
    return (REASONING + answer) if rpm else answer


def expected_text(i: int, feature: str) -> str | None:
    """Choice i's content as the client must see it (None: a tool-call answer carries no text)."""
    if feature == "tools":
        return None
    return json.dumps(JSON_ANSWER) if feature == "json_schema" else ANSWERS[i]


def _choices(feature: str) -> int:
    return 2 if feature == "n2" else 1


def completion_body(feature: str, rpm: bool) -> dict[str, Any]:
    choices = []
    for i in range(_choices(feature)):
        message: dict[str, Any] = {"role": "assistant", "content": _text(i, feature, rpm)}
        choice: dict[str, Any] = {"index": i, "message": message, "finish_reason": "stop"}
        if feature == "tools":
            # The model may think aloud before calling tools: only that reasoning is content.
            message.update(content=REASONING.strip() if rpm else None, tool_calls=copy.deepcopy(NEW_CALLS))
            choice["finish_reason"] = "tool_calls"
        if feature == "logprobs":
            choice["logprobs"] = {"content": logprob_entries(message["content"]), "refusal": None}
        choices.append(choice)
    return {"id": "chatcmpl-matrix", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
            "choices": choices, "usage": dict(USAGE)}


def _event(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-matrix", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "scripted", "choices": choices, **extra}


def _pieces(text: str, size: int = 7) -> list[str]:
    # Small pieces, so tags are split across chunks as a real stream splits them.
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream_events(feature: str, rpm: bool) -> list[dict[str, Any]]:
    """The upstream's stream: choices interleaved piece by piece, each finished, then the usage chunk."""
    count = _choices(feature)
    events = [_event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
              for i in range(count)]
    if feature == "tools":
        for piece in _pieces(REASONING.strip()) if rpm else []:
            events.append(_event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
        for k, call in enumerate(NEW_CALLS):
            head = {"index": k, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            events.append(_event([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]))
            for piece in _pieces(call["function"]["arguments"], 5):
                delta = {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}
                events.append(_event([{"index": 0, "delta": delta, "finish_reason": None}]))
        events.append(_event([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
    else:
        # With logprobs, one token a chunk (as token-streaming servers send it), its entry beside it.
        split = tokens_of if feature == "logprobs" else _pieces
        streams = [split(_text(i, feature, rpm)) for i in range(count)]
        for step in range(max(len(s) for s in streams)):
            for i, pieces in enumerate(streams):
                if step < len(pieces):
                    choice: dict[str, Any] = {"index": i, "delta": {"content": pieces[step]}, "finish_reason": None}
                    if feature == "logprobs":
                        choice["logprobs"] = {"content": logprob_entries(pieces[step]), "refusal": None}
                    events.append(_event([choice]))
        events.extend(_event([{"index": i, "delta": {}, "finish_reason": "stop"}]) for i in range(count))
    events.append(_event([], usage=dict(USAGE)))
    return events


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


# -- calling each surface, and what the client got, in one shape -------------------------------------------


@dataclass
class Got:
    """What the client got, surface-independent: per choice index its text, tool calls, log-prob tokens."""

    texts: dict[int, str | None] = field(default_factory=dict)
    calls: dict[int, list[tuple[str, str, str]]] = field(default_factory=dict)
    logprobs: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    usage: dict[str, int] | None = None
    rapport: dict[str, Any] | None = None


def _dump(model: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = model.model_dump(exclude_none=False)
    return dumped


def _from_completion(result: Any) -> Got:
    got = Got(usage=result.usage.model_dump() if result.usage else None, rapport=(result.model_extra or {}).get("rapport"))
    for choice in result.choices:
        got.texts[choice.index] = choice.message.content
        got.calls[choice.index] = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        if choice.logprobs is not None and choice.logprobs.content is not None:
            got.logprobs[choice.index] = [t.token for t in choice.logprobs.content]
        got.finish[choice.index] = choice.finish_reason
    return got


class ChunkReader:
    """Folds chat chunks into a Got, failing on what a client must never read: content or a finish after its
    choice finished, anything after the usage chunk, a second role chunk for a choice, the extension late."""

    def __init__(self) -> None:
        self.got = Got()
        self.first = True
        self.roles: dict[int, int] = {}
        self.args: dict[tuple[int, int], list[str]] = {}
        self.heads: dict[tuple[int, int], tuple[str, str]] = {}

    def feed(self, part: Any) -> None:
        got = self.got
        assert got.usage is None, f"a chunk after the usage chunk: {part}"
        extension = (part.model_extra or {}).get("rapport")
        if self.first:
            assert extension is not None and "stages" in extension, "the first chunk carries the rapport extension"
            got.rapport, self.first = extension, False
        if part.usage is not None:
            got.usage = part.usage.model_dump()
        for choice in part.choices:
            i = choice.index
            assert i not in got.finish, f"choice {i} got a chunk after it finished: {choice}"
            delta = choice.delta
            if delta.role is not None:
                self.roles[i] = self.roles.get(i, 0) + 1
            if delta.content:
                got.texts[i] = (got.texts.get(i) or "") + delta.content
            for call in delta.tool_calls or []:
                key = (i, call.index)
                if call.id is not None:
                    assert key not in self.heads, "a tool call started twice"
                    self.heads[key] = (call.id, call.function.name if call.function else "")
                if call.function is not None and call.function.arguments:
                    self.args.setdefault(key, []).append(call.function.arguments)
            if choice.logprobs is not None and choice.logprobs.content:
                got.logprobs.setdefault(i, []).extend(t.token for t in choice.logprobs.content)
            if choice.finish_reason is not None:
                got.finish[i] = choice.finish_reason

    def done(self) -> Got:
        assert all(count == 1 for count in self.roles.values()), f"role chunks per choice: {self.roles}"
        for (i, _), (call_id, name) in sorted(self.heads.items()):
            self.got.calls.setdefault(i, []).append((call_id, name, "".join(self.args.get((i, _), []))))
        for i in self.got.finish:
            self.got.texts.setdefault(i, None)
            self.got.calls.setdefault(i, [])
        return self.got


def _from_response(response: Any) -> Got:
    got = Got(rapport=(response.model_extra or {}).get("rapport"), finish={0: response.status})
    got.usage = response.usage.model_dump() if response.usage else None
    texts = [part.text for item in response.output if item.type == "message" for part in item.content
             if part.type == "output_text"]
    got.texts[0] = "".join(texts) if texts else None
    got.calls[0] = [(item.call_id, item.name, item.arguments) for item in response.output if item.type == "function_call"]
    return got


def _check_response_events(kinds: list[str], deltas: str, final: Any) -> None:
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed", kinds
    assert deltas == (final.output_text or ""), "the streamed deltas are the final text"
    assert "<reasoning" not in deltas and "reasoning>" not in deltas


async def call(kind: str, client: Any, surface: str, feature: str, stages: dict[str, Any]) -> Got:
    """Make the case's request with the sync or async client; the async one names the user in `user`."""
    options = {"rapport": {**stages, "record": False}}
    named = {"user": USER} if kind == "async" else {}
    if surface.startswith("chat"):
        kwargs = {"model": MODEL, **chat_request(feature), **named, "extra_body": options}
        if surface == "chat":
            result = client.chat.completions.create(**kwargs)
            return _from_completion(await result if kind == "async" else result)
        stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        reader = ChunkReader()
        if kind == "async":
            async for part in await stream:
                reader.feed(part)
        else:
            for part in stream:
                reader.feed(part)
        return reader.done()
    request, _ = responses_request(feature)
    kwargs = {"model": MODEL, **request, **named, "extra_body": options}
    if surface == "responses":
        response = client.responses.create(**kwargs)
        return _from_response(await response if kind == "async" else response)
    kinds: list[str] = []
    deltas: list[str] = []
    if kind == "async":
        async with client.responses.stream(**kwargs) as events:
            async for event in events:
                kinds.append(event.type)
                deltas.append(event.delta if event.type == "response.output_text.delta" else "")
            final = await events.get_final_response()
    else:
        with client.responses.stream(**kwargs) as events:
            for event in events:
                kinds.append(event.type)
                deltas.append(event.delta if event.type == "response.output_text.delta" else "")
            final = events.get_final_response()
    _check_response_events(kinds, "".join(deltas), final)
    return _from_response(final)


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


def _leading_text(message: dict[str, Any]) -> str:
    return text_of(message["content"])


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
    count = _choices(feature)
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
        assert sent["tools"] == CHAT_TOOLS and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True
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
    return _leading_text(messages[0]) if messages and messages[0]["role"] in ("system", "developer") else ""


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
        got = _from_completion(sync_client.chat.completions.create(**kwargs))
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


# -- log-probabilities follow the shown text (the defect the matrix found), edge cases on ChoiceFilters -----


def _lp_event(index: int, text: str, entries: list[dict[str, Any]] | None, finish: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "delta": {"content": text}, "finish_reason": finish}
    if entries is not None:
        choice["logprobs"] = {"content": entries, "refusal": None}
    return _event([choice])


def _shown(events: list[dict[str, Any]]) -> tuple[str, list[str]]:
    text, tokens = "", []
    for event in events:
        for choice in event["choices"]:
            text += choice["delta"].get("content") or ""
            tokens += [e["token"] for e in (choice.get("logprobs") or {}).get("content") or []]
    return text, tokens


def _stream_through_filters(tokens: list[str], finish_with_last: bool = True) -> tuple[str, list[str]]:
    filters = ChoiceFilters(lambda: [ReasoningStreamFilter()])
    out: list[dict[str, Any]] = []
    for k, token in enumerate(tokens):
        last = finish_with_last and k == len(tokens) - 1
        out += filters.apply(_lp_event(0, token, logprob_entries(token), "stop" if last else None))
    out += filters.tail_chunks()
    return _shown(out)


def test_held_back_text_that_was_no_tag_keeps_its_entries() -> None:
    # "<" might start a tag, so it is held; it turns out to be text, and goes out with its entry.
    text, tokens = _stream_through_filters(["Cheap", " <", " 10", "$", " and", " good", "."])
    assert text == "Cheap < 10$ and good." and tokens == tokens_of("Cheap < 10$ and good.")


def test_an_unclosed_reasoning_block_shows_its_last_line_with_that_lines_entries() -> None:
    raw = "<reasoning>Seafood, cheap.\nI would give it 4"
    text, tokens = _stream_through_filters(tokens_of(raw), finish_with_last=False)
    assert text == "I would give it 4" and tokens == tokens_of("I would give it 4")


def test_entries_that_do_not_add_up_to_their_text_go_with_their_whole_piece() -> None:
    # Byte tokens: the entries' text is not the delta's, so they are placed on their piece as a whole.
    byte_entry = {"token": "\\xe4", "logprob": -1.0, "bytes": [228], "top_logprobs": []}
    filters = ChoiceFilters(lambda: [ReasoningStreamFilter()])
    out = filters.apply(_lp_event(0, "<reasoning>x</reasoning>", [byte_entry, byte_entry]))
    out += filters.apply(_lp_event(0, "\u00e4!", [byte_entry, byte_entry], "stop"))
    assert _shown(out) == ("\u00e4!", ["\\xe4", "\\xe4"])


def test_a_whole_message_keeps_only_the_answers_entries() -> None:
    raw = _text(0, "n2", rpm=True)
    choice = {"index": 0, "message": {"role": "assistant", "content": raw},
              "logprobs": {"content": logprob_entries(raw), "refusal": None}}
    trim_message_logprobs(choice, raw, strip_reasoning(raw))
    assert [e["token"] for e in choice["logprobs"]["content"]] == tokens_of(ANSWERS[0])
    # Nothing removed: the entries are the upstream's, untouched.
    plain = {"index": 0, "logprobs": {"content": logprob_entries(ANSWERS[1]), "refusal": None}}
    trim_message_logprobs(plain, ANSWERS[1], ANSWERS[1])
    assert plain["logprobs"]["content"] == logprob_entries(ANSWERS[1])
