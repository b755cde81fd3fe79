"""Translation between the Responses API and chat completions, for upstreams that speak only chat.

Pure functions over plain dicts: the Responses input becomes chat messages, the chat answer becomes a
Response object, and a chat stream becomes the Responses stream's typed events.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from proxy.entrypoints.responses.protocol import ResponsesRequest
from proxy.errors import InvalidRequest
from rapport.core.messages import text_of

ROLES = ("user", "assistant", "system", "developer")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _part(part: Any, param: str, role: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image" and role == "user":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(
                f"'{param}.image_url' is required (uploaded file ids are not supported).", param=f"{param}.image_url"
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and role == "user" and isinstance(part.get("file_data"), str):
        file: dict[str, Any] = {"file_data": part["file_data"]}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise InvalidRequest(f"Content part type {kind!r} is not supported here.", param=f"{param}.type")


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"'{param}.role' must be one of {', '.join(ROLES)}.", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"'{param}.content' must be a string or a list of parts.", param=f"{param}.content")
    parts = [_part(p, f"{param}.content[{j}]", role) for j, p in enumerate(content)]
    if role != "user" or all(p["type"] == "text" for p in parts):
        # Chat's system and assistant messages take text only; a string keeps every upstream happy.
        return {"role": role, "content": "\n".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def input_messages(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's `input` as chat messages (function calls become assistant tool calls, their outputs
    tool messages, consecutive calls one assistant message as chat expects for parallel calls)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{param}' must be an object.", param=param)
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, param))
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise InvalidRequest(f"'{param}' needs 'call_id' and 'name'.", param=param)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": str(item.get("arguments") or "")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"'{param}.call_id' is required.", param=f"{param}.call_id")
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": call_id, "content": output if isinstance(output, str) else text_of(output)})
        else:
            raise InvalidRequest(f"Input item type {kind!r} is not supported here.", param=f"{param}.type")
    return out


def chat_body(req: ResponsesRequest, model: str, messages: list[dict[str, Any]], user: str | None) -> dict[str, Any]:
    """The chat-completions request that answers `req`."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": {k: v for k, v in tool.items() if k != "type" and v is not None}}
            for tool in req.tools
        ]
    if isinstance(req.tool_choice, dict):
        if req.tool_choice.get("type") != "function" or not isinstance(req.tool_choice.get("name"), str):
            raise InvalidRequest("'tool_choice' must name a function: {type: 'function', name}.", param="tool_choice")
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice["name"]}}
    elif req.tool_choice is not None:
        if req.tool_choice not in ("auto", "none", "required"):
            raise InvalidRequest("'tool_choice' must be auto, none, required or a function.", param="tool_choice")
        body["tool_choice"] = req.tool_choice
    if req.parallel_tool_calls is not None and req.tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if not fmt.name or fmt.schema_ is None:
            raise InvalidRequest("'text.format' of type json_schema needs 'name' and 'schema'.", param="text.format")
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        if fmt.description:
            schema["description"] = fmt.description
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    for name, value in (
        ("max_tokens", req.max_output_tokens),
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("prompt_cache_key", req.prompt_cache_key),
        ("service_tier", req.service_tier),
        ("user", user or req.user),
    ):
        if value is not None:
            body[name] = value
    return body


# -- answers ------------------------------------------------------------------------------------------


def message_item(text: str, *, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(call_id: str, name: str, arguments: str, *, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id or new_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat answer's message as Responses output items."""
    items: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        items.append(message_item(content))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        items.append({**message_item(""), "content": [{"type": "refusal", "refusal": refusal}]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append(call_item(str(call.get("id") or new_id("call")), str(function.get("name", "")), str(function.get("arguments") or "")))
    return items


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def response_object(
    response_id: str,
    req: ResponsesRequest,
    model: str,
    *,
    output: list[dict[str, Any]],
    status: str,
    usage: dict[str, Any] | None,
    created_at: float,
    incomplete: str | None = None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "status": status,
        "model": model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": req.instructions,
        "metadata": req.metadata or {},
        "max_output_tokens": req.max_output_tokens,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "store": req.store is not False,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "text": req.text.model_dump(by_alias=True, exclude_none=True) if req.text else {"format": {"type": "text"}},
        "tool_choice": req.tool_choice or "auto",
        "tools": req.tools or [],
        "truncation": req.truncation or "disabled",
        "user": req.user,
    }


def history_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items back as chat messages, to continue a conversation from `previous_response_id`.

    Only messages and function calls carry on: a passed-through upstream may also answer other items (a
    reasoning model's reasoning), which an upstream that keeps no state (store false) cannot take back."""
    return input_messages(
        [
            {"type": "message", "role": "assistant", "content": item["content"]}
            if item["type"] == "message"
            else {k: item[k] for k in ("type", "call_id", "name", "arguments")}
            for item in output
            if item.get("type") in ("message", "function_call")
        ]
    )


# -- streams ------------------------------------------------------------------------------------------


@dataclass
class _Call:
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamTranslator:
    """Turns chat.completion.chunk events (choice 0) into the Responses stream's typed events, in order."""

    base: dict[str, Any]
    sequence: int = 0
    text: list[str] = field(default_factory=list)
    text_item: str | None = None
    text_index: int = -1
    calls: dict[int, _Call] = field(default_factory=dict)
    items: int = 0
    finish: str | None = None
    usage: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def start(self) -> list[dict[str, Any]]:
        shell = {**self.base, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
        return [self.event("response.created", response=shell), self.event("response.in_progress", response=shell)]

    def text_delta(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        out: list[dict[str, Any]] = []
        if self.text_item is None:
            self.text_item, self.text_index = new_id("msg"), self.items
            self.items += 1
            item = {**message_item("", item_id=self.text_item, status="in_progress"), "content": []}
            out.append(self.event("response.output_item.added", output_index=self.text_index, item=item))
            out.append(
                self.event(
                    "response.content_part.added",
                    item_id=self.text_item,
                    output_index=self.text_index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        self.text.append(delta)
        out.append(
            self.event(
                "response.output_text.delta",
                item_id=self.text_item,
                output_index=self.text_index,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return out

    def chunk(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Events for one upstream chunk whose text deltas were already filtered by the stages."""
        if event.get("usage"):
            self.usage = event["usage"]
        out: list[dict[str, Any]] = []
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                out.extend(self.text_delta(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.extend(self._call_delta(call))
            self.finish = choice.get("finish_reason") or self.finish
        return out

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        index = call.get("index", 0)
        function = call.get("function") or {}
        out: list[dict[str, Any]] = []
        state = self.calls.get(index)
        if state is None:
            state = _Call(new_id("fc"), self.items, str(call.get("id") or new_id("call")), str(function.get("name") or ""))
            self.items += 1
            self.calls[index] = state
            item = call_item(state.call_id, state.name, "", item_id=state.item_id, status="in_progress")
            out.append(self.event("response.output_item.added", output_index=state.output_index, item=item))
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            state.arguments.append(piece)
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=state.item_id,
                    output_index=state.output_index,
                    delta=piece,
                )
            )
        return out

    def finish_events(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The closing events of every open item, and the final output list."""
        out: list[dict[str, Any]] = []
        items: list[tuple[int, dict[str, Any]]] = []
        if self.text_item is not None:
            text = "".join(self.text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            common = {"item_id": self.text_item, "output_index": self.text_index, "content_index": 0}
            out.append(self.event("response.output_text.done", text=text, logprobs=[], **common))
            out.append(self.event("response.content_part.done", part=part, **common))
            item = message_item(text, item_id=self.text_item)
            out.append(self.event("response.output_item.done", output_index=self.text_index, item=item))
            items.append((self.text_index, item))
        for state in self.calls.values():
            arguments = "".join(state.arguments)
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=state.item_id,
                    output_index=state.output_index,
                    name=state.name,
                    arguments=arguments,
                )
            )
            item = call_item(state.call_id, state.name, arguments, item_id=state.item_id)
            out.append(self.event("response.output_item.done", output_index=state.output_index, item=item))
            items.append((state.output_index, item))
        return out, [item for _, item in sorted(items, key=lambda pair: pair[0])]
