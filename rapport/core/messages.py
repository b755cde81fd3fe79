"""Helpers over OpenAI chat messages, one behaviour for every stage that reads or extends them."""

from __future__ import annotations

from typing import Any

SYSTEM_ROLES = frozenset({"system", "developer"})


def text_of(content: Any) -> str:
    """The text of a message's `content`: a string as is, the text parts of a part list joined by newlines.

    Images, audio and files carry no text here, so a content of only such parts is "".
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text") and part.get("text")
        )
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message ("" when there is none or it holds no text)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def append_system(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    """Add `block` to the request's one leading system (or developer) message, creating it when absent.

    Stages call this in turn, so all of Rapport's additions land in a single leading message whatever the
    client's content shape: a string is extended, a part list gains a text part. The input is not mutated.
    """
    if not block:
        return messages
    out = list(messages)
    if out and isinstance(out[0], dict) and out[0].get("role") in SYSTEM_ROLES:
        first = dict(out[0])
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = [*content, {"type": "text", "text": block}]
        else:
            first["content"] = f"{content}\n\n{block}" if content else block
        out[0] = first
    else:
        out.insert(0, {"role": "system", "content": block})
    return out
