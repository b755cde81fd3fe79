"""Stage 3's output side: the reasoning instruction of the conditioning, and removing the model's reasoning
from the final answer when a request keeps it out (`strip_reasoning` for whole texts,
`ReasoningStreamFilter` for streamed deltas)."""

from __future__ import annotations

import re

OPEN, CLOSE = "<reasoning>", "</reasoning>"
_BLOCK = re.compile(r"<reasoning>.*?</reasoning>\s*", re.DOTALL | re.IGNORECASE)

REASONING_INSTRUCTION = (
    f"Write that reasoning between {OPEN} and {CLOSE}, then give your final answer after {CLOSE}."
)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def strip_reasoning(text: str) -> str:
    """The final answer without the `<reasoning>` block(s).

    A close tag without an open one means everything before it was reasoning. An unclosed block is cut;
    if that leaves nothing, the block's last line is returned (weak models end their reasoning with
    the answer), so the client never gets an empty message for a model that ignored the format.
    """
    out = _BLOCK.sub("", text)
    lowered = out.lower()
    close = lowered.rfind(CLOSE)
    if close != -1:
        out = out[close + len(CLOSE) :]
        lowered = out.lower()
    start = lowered.find(OPEN)
    if start != -1:
        head, tail = out[:start], out[start + len(OPEN) :]
        out = head if head.strip() else _last_line(tail)
    return out.strip()


def _partial_suffix(buffer: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `buffer` that could be the start of a tag."""
    lowered = buffer.lower()
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(lowered)), 0, -1):
            if tag.startswith(lowered[-n:]):
                best = max(best, n)
                break
    return best


class ReasoningStreamFilter:
    """Feed streamed content deltas; get back what may be shown. Tags split across deltas are handled.

    Limitation (streaming cannot look back): a close tag with no open tag drops only the tag itself.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._inside = False
        self._emitted = False
        self._reasoning_tail = ""
        self._trim_next = False

    def feed(self, delta: str) -> str:
        self._buffer += delta
        shown: list[str] = []
        while True:
            lowered = self._buffer.lower()
            if self._inside:
                end = lowered.find(CLOSE)
                if end == -1:
                    keep = _partial_suffix(self._buffer, (CLOSE,))
                    cut = len(self._buffer) - keep
                    self._reasoning_tail = (self._reasoning_tail + self._buffer[:cut])[-500:]
                    self._buffer = self._buffer[cut:]
                    break
                self._reasoning_tail = (self._reasoning_tail + self._buffer[:end])[-500:]
                self._buffer = self._buffer[end + len(CLOSE) :]
                self._inside, self._trim_next = False, True
                continue
            start = lowered.find(OPEN)
            stray = lowered.find(CLOSE)
            if stray != -1 and (start == -1 or stray < start):
                shown.append(self._show(self._buffer[:stray]))
                self._buffer = self._buffer[stray + len(CLOSE) :]
                self._trim_next = True
                continue
            if start != -1:
                shown.append(self._show(self._buffer[:start]))
                self._buffer = self._buffer[start + len(OPEN) :]
                self._inside = True
                continue
            keep = _partial_suffix(self._buffer, (OPEN, CLOSE))
            cut = len(self._buffer) - keep
            shown.append(self._show(self._buffer[:cut]))
            self._buffer = self._buffer[cut:]
            break
        return "".join(shown)

    def _show(self, text: str) -> str:
        # Whitespace right after a removed block (or at the very start) is dropped, as strip_reasoning does.
        if self._trim_next or not self._emitted:
            text = text.lstrip()
            if text:
                self._trim_next = False
        if text:
            self._emitted = True
        return text

    def flush(self) -> str:
        if self._inside:
            tail = self._reasoning_tail + self._buffer
            self._buffer = ""
            return "" if self._emitted else _last_line(tail)
        rest, self._buffer = self._buffer, ""
        return self._show(rest)

