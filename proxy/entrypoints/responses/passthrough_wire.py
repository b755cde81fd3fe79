"""Translation for /v1/responses passed through to an upstream that speaks Responses itself.

Rapport keeps the conversation as chat messages (the same history the bridge stores, so a conversation
continues whichever way its model is reached) and the stages compose into the leading system message of
those. Here that becomes the upstream's Responses request: the leading system message is `instructions`,
the rest input items; and the upstream's answer gets Rapport's ids and the stages' rewriting of its text.
Pure functions over plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.entrypoints.responses import bridge
from proxy.entrypoints.responses.protocol import ResponsesRequest
from rapport.core.messages import SYSTEM_ROLES, text_of

_ID_PREFIX = {"message": "msg", "function_call": "fc", "reasoning": "rs"}


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url") or {}
        out: dict[str, Any] = {"type": "input_image", "image_url": image.get("url")}
        if image.get("detail"):
            out["detail"] = image["detail"]
        return out
    if kind == "file":
        return {"type": "input_file", **(part.get("file") or {})}
    return {"type": "input_text", "text": str(part.get("text", ""))}


def input_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages (as bridge.input_messages makes them) as Responses input items, without ids: the
    upstream stores nothing, so an id would name an item it does not have."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": message.get("tool_call_id"), "output": text_of(content)})
            continue
        if isinstance(content, list):
            items.append({"type": "message", "role": role, "content": [_part(p) for p in content if isinstance(p, dict)]})
        elif isinstance(content, str) and (content or not message.get("tool_calls")):
            items.append({"type": "message", "role": role, "content": content})
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            items.append(
                {"type": "function_call", "call_id": call.get("id"), "name": function.get("name"),
                 "arguments": function.get("arguments") or ""}
            )
    return items


def split_instructions(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(instructions, the rest): the leading system or developer message, where the request's own
    instructions and the stages' blocks are, becomes `instructions`. A client's leading system input item
    lands there too, which is where the Responses API would put instructions anyway: first, with system
    authority."""
    if messages and messages[0].get("role") in SYSTEM_ROLES:
        return text_of(messages[0].get("content")) or None, messages[1:]
    return None, messages


def upstream_body(req: ResponsesRequest, model: str, messages: list[dict[str, Any]], user: str | None, stream: bool) -> dict[str, Any]:
    """The Responses request the upstream gets: `store` false (Rapport keeps the state), the conversation
    expanded in full (no previous_response_id upstream), the client's options it can honour."""
    instructions, rest = split_instructions(messages)
    body: dict[str, Any] = {"model": model, "input": input_items(rest), "store": False}
    if instructions:
        body["instructions"] = instructions
    if req.tools:
        # Function tools only (protocol.refusals refused the others), their unset fields dropped.
        body["tools"] = [{k: v for k, v in tool.items() if v is not None} for tool in req.tools]
    if req.text is not None:
        body["text"] = req.text.model_dump(by_alias=True, exclude_none=True)
    for name, value in (
        ("tool_choice", req.tool_choice),
        ("parallel_tool_calls", req.parallel_tool_calls),
        ("max_output_tokens", req.max_output_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("truncation", req.truncation),
        ("prompt_cache_key", req.prompt_cache_key),
        ("safety_identifier", req.safety_identifier),
        ("service_tier", req.service_tier),
        ("user", user or req.user),
    ):
        if value is not None:
            body[name] = value
    if stream:
        body["stream"] = True
    return body


# -- answers ------------------------------------------------------------------------------------------


class ItemIds:
    """The upstream's output item ids -> Rapport's own, made on first sight (one per item, stable across
    the stream's events and its final response)."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def of(self, upstream_id: Any, kind: Any) -> str:
        key = str(upstream_id) if upstream_id is not None else f"#{len(self._ids)}"
        if key not in self._ids:
            self._ids[key] = bridge.new_id(_ID_PREFIX.get(str(kind), "item"))
        return self._ids[key]



def rewrite_item(item: dict[str, Any], ids: ItemIds, text_for: Callable[[str, int, str], str]) -> dict[str, Any]:
    """One upstream output item with Rapport's id, and in its output_text parts the text the client is
    shown: `text_for(item id, content index, upstream text)`. `call_id` stays: the client answers a call
    with it, and Rapport replays it to the upstream."""
    out = {**item, "id": ids.of(item.get("id"), item.get("type"))}
    if item.get("type") == "message" and isinstance(item.get("content"), list):
        out["content"] = [
            {**part, "text": text_for(out["id"], index, str(part.get("text") or ""))}
            if isinstance(part, dict) and part.get("type") == "output_text"
            else part
            for index, part in enumerate(item["content"])
        ]
    return out


def answer_text(output: list[dict[str, Any]]) -> str:
    """The answer's text as the client sees it (what the stages record)."""
    return "".join(
        str(part.get("text") or "")
        for item in output
        if item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    )


def finish_reason(output: list[dict[str, Any]], status: Any, incomplete: Any) -> str:
    """The chat finish_reason of an answer: what the stages' recording and the stored response read."""
    reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
    if status == "incomplete" and reason == "content_filter":
        return "content_filter"
    if status == "incomplete":
        return "length"
    if any(item.get("type") == "function_call" for item in output):
        return "tool_calls"
    return "stop"


def usage_of(usage: Any) -> dict[str, Any] | None:
    """The upstream's usage as it gave it, with the detail objects the SDKs expect filled in."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
    return {
        **usage,
        "input_tokens": prompt,
        "input_tokens_details": usage.get("input_tokens_details") or {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": usage.get("output_tokens_details") or {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Responses usage in the chat shape the stages' `Exchange` carries on every endpoint."""
    if not usage:
        return {}
    return {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["total_tokens"]}

