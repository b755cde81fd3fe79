"""Composing retrieved items and a summary into one block of quoted, dated data (placed in the request by
rapport.core.messages.append_system).

Each item is rendered as one line holding a JSON string literal, so newlines and quotes inside it cannot
start a new line of the block, and any text that could open or close the memory block is escaped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template

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


@dataclass(frozen=True, slots=True)
class Composed:
    """A composed block: its text, how many of the items it holds, its estimated tokens, and whether the
    summary is in it (only what is in the block is reported as injected)."""

    text: str = ""
    items_used: int = 0
    tokens: int = 0
    summary_used: bool = False
    neighbours: tuple[MemoryItem, ...] = ()


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

    def summary_fits(self, summary: str, task: str, budget: int) -> bool:
        """Whether the summary line fits `budget` tokens beside the template's frame.

        Asked before retrieval, so that a summary that will not be shown neither shrinks `k` nor is reported.
        """
        self._reload()
        return estimate_tokens(self._frame()) + estimate_tokens(render_summary(summary, task)) <= budget

    def _frame(self) -> str:
        return self._template.safe_substitute(summary="", items="")

    def block(
        self,
        items: list[MemoryItem],
        summary: str | None,
        task: str,
        budget: int,
        neighbours: dict[str, list[MemoryItem]] | None = None,
    ) -> Composed:
        """The block within `budget` tokens (the summary first, then as many items as fit, then as many of
        their `neighbours` as the rest of the budget holds); empty when nothing fits."""
        self._reload()
        if not items and not summary:
            return Composed()
        remaining = budget - estimate_tokens(self._frame())
        summary_text = ""
        if summary:
            candidate = render_summary(summary, task)
            if estimate_tokens(candidate) <= remaining:
                summary_text = candidate
                remaining -= estimate_tokens(candidate)
        lines = [render_item(item) for item in items]
        used = fit_budget(lines, remaining)
        if not summary_text and used == 0:
            return Composed()
        body = "".join(lines[:used])
        added: list[MemoryItem] = []
        if neighbours:
            left = remaining - sum(estimate_tokens(line) for line in lines[:used])
            body, added = with_neighbours(items[:used], neighbours, left)
        text = self._template.safe_substitute(summary=summary_text, items=body)
        return Composed(text, used, estimate_tokens(text), bool(summary_text), tuple(added))


def with_neighbours(
    items: list[MemoryItem], neighbours: dict[str, list[MemoryItem]], budget: int
) -> tuple[str, list[MemoryItem]]:
    """The items' lines, each with the neighbours that fit in `budget` tokens around it in time order.

    Neighbours are taken for the best-ranked items first, so the budget goes where relevance is highest; an
    item that is already in the block (retrieved itself, or another's neighbour) is never repeated.
    """
    shown = {item.id for item in items}
    taken: dict[str, list[MemoryItem]] = {item.id: [] for item in items}
    added: list[MemoryItem] = []
    for item in items:
        for near in neighbours.get(item.id, []):
            cost = estimate_tokens(render_item(near))
            if near.id in shown or cost > budget:
                continue
            budget -= cost
            shown.add(near.id)
            taken[item.id].append(near)
            added.append(near)
    parts: list[str] = []
    for item in items:
        group = sorted([item, *taken[item.id]], key=lambda it: it.ts)
        parts += [render_item(it) for it in group]
    return "".join(parts), added
