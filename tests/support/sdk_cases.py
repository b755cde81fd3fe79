"""The SDK matrix's cases (tests/proxy/test_sdk_matrix.py): what the client sends for each chat feature on
each surface, and what the scripted upstream answers, with RPM's `<reasoning>` block when RPM is on."""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from typing import Any

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
EARLIER_CALL: dict[str, Any] = {"id": "call_menu", "type": "function", "function": {"name": "get_menu", "arguments": '{"place": "Harbor"}'}}
TOOL_RESULT = '{"dishes": ["grilled fish", "chilli tofu"]}'
# The upstream's answer to a tool request: two parallel calls.
NEW_CALLS: list[dict[str, Any]] = [
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
        return {"messages": [{"role": "user", "content": QUESTION}], "n": 2, "stop": ["\n\n\n", "</answer>"]}
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
            "tools": RESPONSES_TOOLS, "tool_choice": "required", "parallel_tool_calls": True,
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


def upstream_text(i: int, feature: str, rpm: bool) -> str:
    """Choice i's content as the upstream writes it (with RPM's reasoning block when RPM asked for one)."""
    answer = json.dumps(JSON_ANSWER) if feature == "json_schema" else ANSWERS[i]
    return (REASONING + answer) if rpm else answer


def expected_text(i: int, feature: str) -> str | None:
    """Choice i's content as the client must see it (None: a tool-call answer carries no text)."""
    if feature == "tools":
        return None
    return json.dumps(JSON_ANSWER) if feature == "json_schema" else ANSWERS[i]


def choice_count(feature: str) -> int:
    return 2 if feature == "n2" else 1


def completion_body(feature: str, rpm: bool) -> dict[str, Any]:
    choices = []
    for i in range(choice_count(feature)):
        message: dict[str, Any] = {"role": "assistant", "content": upstream_text(i, feature, rpm)}
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


def chunk_event(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-matrix", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "scripted", "choices": choices, **extra}


def split_text(text: str, size: int = 7) -> list[str]:
    # Small pieces, so tags are split across chunks as a real stream splits them.
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream_events(feature: str, rpm: bool) -> list[dict[str, Any]]:
    """The upstream's stream: choices interleaved piece by piece, each finished, then the usage chunk."""
    count = choice_count(feature)
    events = [chunk_event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
              for i in range(count)]
    if feature == "tools":
        for piece in split_text(REASONING.strip()) if rpm else []:
            events.append(chunk_event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]))
        for k, call in enumerate(NEW_CALLS):
            head = {"index": k, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            events.append(chunk_event([{"index": 0, "delta": {"tool_calls": [head]}, "finish_reason": None}]))
            for piece in split_text(call["function"]["arguments"], 5):
                delta = {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}
                events.append(chunk_event([{"index": 0, "delta": delta, "finish_reason": None}]))
        events.append(chunk_event([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
    else:
        # With logprobs, one token a chunk (as token-streaming servers send it), its entry beside it.
        split = tokens_of if feature == "logprobs" else split_text
        streams = [split(upstream_text(i, feature, rpm)) for i in range(count)]
        for step in range(max(len(s) for s in streams)):
            for i, pieces in enumerate(streams):
                if step < len(pieces):
                    choice: dict[str, Any] = {"index": i, "delta": {"content": pieces[step]}, "finish_reason": None}
                    if feature == "logprobs":
                        choice["logprobs"] = {"content": logprob_entries(pieces[step]), "refusal": None}
                    events.append(chunk_event([choice]))
        events.extend(chunk_event([{"index": i, "delta": {}, "finish_reason": "stop"}]) for i in range(count))
    events.append(chunk_event([], usage=dict(USAGE)))
    return events
