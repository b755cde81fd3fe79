"""The stages' stream filters applied to every choice of a streamed chat answer, tails in order.

Each choice index gets its own chain of filters (a filter holds state: an open `<reasoning>` block, a
partial tag), made on the choice's first delta. What a chain still holds when its choice finishes goes out
in a chunk of its own just before the chunk that carries that choice's `finish_reason`, and anything
still held when the usage chunk (the one without choices) or the end of the stream comes goes out before
them, so a client never reads content after a choice finished. A choice's log-probabilities follow its text: each chunk carries the
entries of the text it shows, and the entries of removed text are dropped (see shown_logprobs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.entrypoints.chat.shown_logprobs import ShownLogprobs, logprob_entries
from proxy.pipeline.stage import TextFilter

# Fields of an event that belong to it alone and must not be copied onto a chunk made from it.
_OWN_FIELDS = ("choices", "usage", "rapport")


class ChoiceFilters:
    def __init__(self, make_chain: Callable[[], list[TextFilter]]) -> None:
        self._make_chain = make_chain
        self._chains: dict[int, list[TextFilter]] = {}
        self._logprobs: dict[int, ShownLogprobs] = {}
        self._last: dict[str, Any] = {}

    def apply(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The events to send for one upstream event: its rewritten self, preceded by a chunk per choice
        whose held-back text must go out before the event finishes that choice (or carries the usage)."""
        self._last = event
        tails: dict[int, tuple[str, Any, list[Any]]] = {}
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if not isinstance(index, int):
                continue
            delta = choice.get("delta")
            entries = logprob_entries(choice)
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                raw = delta["content"]
                delta["content"] = self._feed(index, raw)
                aligner = self._logprobs[index]
                aligner.take(raw, entries)
                shown_entries = aligner.shown(delta["content"])
                if entries is not None:
                    choice["logprobs"]["content"] = shown_entries
                elif shown_entries:  # held-back text of an earlier chunk, shown here with its entries
                    choice["logprobs"] = {"content": shown_entries, "refusal": None}
            if choice.get("finish_reason"):
                tail, tail_entries = self._close(index)
                if tail and isinstance(delta, dict):
                    # What this chunk itself shows comes before the tail: move it into the tail's chunk
                    # (with the role, if this is the only chunk), leaving the finish and the rest here.
                    shown = delta.get("content")
                    if isinstance(shown, str) and shown:
                        tail, delta["content"] = shown + tail, ""
                        moved = logprob_entries(choice)
                        if moved:
                            tail_entries = [*moved, *tail_entries]
                            choice["logprobs"]["content"] = []
                    tails[index] = (tail, delta.pop("role", None), tail_entries)
                elif tail:
                    tails[index] = (tail, None, tail_entries)
        if event.get("usage") and not choices:
            # The usage chunk (no choices) comes last: what is still held goes out before it. Usage beside
            # choices (a server reporting it on every chunk) ends nothing.
            tails.update((index, (tail, None, entries)) for index, (tail, entries) in self.close_all().items())
        return [*(self._chunk(index, tail, role, entries) for index, (tail, role, entries) in tails.items()), event]

    def close_all(self) -> dict[int, tuple[str, list[Any]]]:
        """Flush every choice not finished yet (the stream ended, or usage is next): index -> its tail and
        the tail's log-probability entries."""
        out: dict[int, tuple[str, list[Any]]] = {}
        for index in list(self._chains):
            tail, entries = self._close(index)
            if tail:
                out[index] = (tail, entries)
        return out

    def tail_chunks(self) -> list[dict[str, Any]]:
        """Chunks for what is still held when the stream ends without finishing some choice."""
        return [self._chunk(index, tail, None, entries) for index, (tail, entries) in self.close_all().items()]

    def _feed(self, index: int, text: str) -> str:
        # A choice's first delta makes its chain (content after its finish, which no upstream should send,
        # starts a new one rather than passing unfiltered).
        chain = self._chains.get(index)
        if chain is None:
            chain = self._chains[index] = self._make_chain()
            self._logprobs[index] = ShownLogprobs()
        for f in chain:
            text = f.feed(text)
        return text

    def _close(self, index: int) -> tuple[str, list[Any]]:
        chain = self._chains.pop(index, None) or []
        aligner = self._logprobs.pop(index, None)
        tail = ""
        # Each filter's leftover passes through the filters after it, as streamed text does.
        for f in chain:
            tail = f.feed(tail) if tail else ""
            tail += f.flush()
        return tail, aligner.shown(tail) if aligner is not None else []

    def _chunk(self, index: int, text: str, role: Any, entries: list[Any]) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": text}
        if role is not None:
            delta = {"role": role, **delta}
        base = {k: v for k, v in self._last.items() if k not in _OWN_FIELDS}
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if entries:
            choice["logprobs"] = {"content": entries, "refusal": None}
        return {**base, "choices": [choice]}
