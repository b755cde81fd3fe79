"""Composing retrieved items and a summary into the request's system message, as quoted dated data.

Each item is rendered as one line holding a JSON string literal, so newlines and quotes inside it cannot
start a new line of the block, and any text that could open or close the memory block is escaped.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any

from memory.items import MemoryItem
from memory.retrieval import estimate_tokens, fit_budget

PACKAGED_TEMPLATE = Path(__file__).with_name("templates") / "memory_block.txt"
# Anything that looks like an opening or closing tag of the block (any case, spaces, slashes).
_TAG = re.compile(r"<\s*/?\s*user_memory\s*/?\s*>", re.IGNORECASE)


# Chat-template control tokens (ChatML, Llama 3, Llama 2): servers that parse special tokens inside message
# content would read them as real turn boundaries, so stored text must never carry them intact.
_CONTROL = re.compile(r"<\|[^<>|\s]{1,40}\|>|\[/?INST\]|<</?SYS>>", re.IGNORECASE)
# Line breaks that json.dumps(ensure_ascii=False) leaves raw but Unicode-aware readers split lines on.
_UNICODE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def _defang(match: re.Match[str]) -> str:
    return match.group(0).replace("<", "‹").replace(">", "›").replace("[", "⟦").replace("]", "⟧")


def escape(text: str) -> str:
    return _CONTROL.sub(_defang, _TAG.sub(_defang, text))


def quote(text: str) -> str:
    # ensure_ascii=False keeps non-English text readable; json escapes quotes, backslashes and newlines.
    return json.dumps(escape(text), ensure_ascii=False).translate(_UNICODE_BREAKS)


def render_item(item: MemoryItem) -> str:
    day = datetime.fromtimestamp(item.ts, tz=UTC).strftime("%Y-%m-%d")
    who = "the user" if item.role == "user" else "the assistant"
    return f"- [{day}] {who} said: {quote(item.text)}\n"


def render_summary(text: str, task: str) -> str:
    return f"Summary of the user (task: {task}): {quote(text)}\n"


class Composer:
    def __init__(self, template_path: Path | None = None) -> None:
        self.path = template_path or PACKAGED_TEMPLATE
        self._mtime = -1.0
        self._template = Template("")
        self._reload()

    def _reload(self) -> None:
        # The template is an editable file: pick up edits without a restart (checked by mtime, cheap).
        mtime = self.path.stat().st_mtime
        if mtime != self._mtime:
            self._template = Template(self.path.read_text(encoding="utf-8"))
            self._mtime = mtime

    def block(
        self, items: list[MemoryItem], summary: str | None, task: str, budget: int
    ) -> tuple[str, int, int]:
        """(block text, items used, estimated tokens) within `budget` tokens; empty when nothing fits."""
        self._reload()
        if not items and not summary:
            return "", 0, 0
        frame = self._template.safe_substitute(summary="", items="")
        remaining = budget - estimate_tokens(frame)
        summary_text = ""
        if summary:
            candidate = render_summary(summary, task)
            if estimate_tokens(candidate) <= remaining:
                summary_text = candidate
                remaining -= estimate_tokens(candidate)
        lines = [render_item(item) for item in items]
        used = fit_budget(lines, remaining)
        if not summary_text and used == 0:
            return "", 0, 0
        text = self._template.safe_substitute(summary=summary_text, items="".join(lines[:used]))
        return text, used, estimate_tokens(text)


def merge_system(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    """Append the block to the leading system/developer message, or insert a system message first."""
    if not block:
        return messages
    out = list(messages)
    if out and out[0].get("role") in ("system", "developer"):
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
