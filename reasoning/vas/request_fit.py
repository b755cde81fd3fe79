"""What VAS can honour in a chat request, and why not where it cannot.

VAS decodes one text answer from the chat's text. A request that needs more (tools or tool turns, a
response format, several choices, images or other non-text parts, log-probabilities, sampling controls
VAS does not implement) is not steered: the plain upstream path answers it unchanged, and the response
says VAS was not applied and why. `stop` and `stream_options.include_usage` are honoured by VAS itself.
"""

from __future__ import annotations

from typing import Any

from rapport.core.messages import text_of

# Content part types VAS reads as text; any other part (image_url, input_audio, file...) it cannot see.
TEXT_PARTS = frozenset({"text", "input_text"})


def _set(value: Any) -> bool:
    return value is not None and value is not False and value != [] and value != {}


def unsupported(body: dict[str, Any]) -> str | None:
    """The first feature of the request that VAS cannot honour, as a reason; None when it can."""
    for field in ("tools", "functions"):
        if _set(body.get(field)):
            return f"tools: the request carries `{field}`"
    for field in ("tool_choice", "function_call"):
        if body.get(field) not in (None, "none"):
            return f"tools: the request sets `{field}`"
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        return f"response_format: {response_format.get('type')}"
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return f"n={n}: VAS decodes one choice"
    if body.get("logprobs") or body.get("top_logprobs"):
        return "logprobs: VAS does not return log-probabilities"
    modalities = body.get("modalities")
    if _set(body.get("audio")) or (isinstance(modalities, list) and "audio" in modalities):
        return "audio output"
    for field in ("logit_bias", "prediction", "web_search_options"):
        if _set(body.get(field)):
            return f"`{field}` is not implemented by VAS"
    for field in ("presence_penalty", "frequency_penalty"):
        if body.get(field) not in (None, 0, 0.0):
            return f"`{field}` is not implemented by VAS"
    return _unsupported_message(body.get("messages") or [])


def _unsupported_message(messages: list[Any]) -> str | None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("tool", "function"):
            return f"tool turns: messages[{i}] has role {role!r}"
        if _set(message.get("tool_calls")) or _set(message.get("function_call")):
            return f"tool turns: messages[{i}] carries tool calls"
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in TEXT_PARTS:
                    return f"non-text content: messages[{i}] has a {kind!r} part"
        elif content is not None and not isinstance(content, str):
            return f"non-text content: messages[{i}]"
    return None


def text_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat as VAS renders it: role, text and (where given) the speaker's name, nothing dropped.

    Only called for requests `unsupported` accepted, so every part is text and nothing else is lost.
    """
    out = []
    for message in body.get("messages") or []:
        item: dict[str, Any] = {"role": message.get("role", "user"), "content": text_of(message.get("content"))}
        if isinstance(message.get("name"), str):
            item["name"] = message["name"]
        out.append(item)
    return out
