"""Keep a choice's log-probabilities in step with the text a stage's filter lets the client see.

A stage that removes text from an answer (RPM's `<reasoning>` block) must remove that text's tokens from
`choice.logprobs.content` too, or the removed text reaches the client anyway, token by token. The entries
are placed on the raw text they came with, and each piece of shown text takes the entries that overlap the
place it was found at; entries before it belonged to removed text and are dropped.

Placement: where the tokens of one upstream piece (a chunk's delta, or a whole message) add up to its text,
each entry gets its own span; where they do not (byte tokens, say), every entry of the piece gets the whole
piece's span. Shown text is found at its last occurrence after what was already shown (a filter only
shows what follows what it removed); text that cannot be found takes no entries, never wrong ones.
"""

from __future__ import annotations

from typing import Any


def logprob_entries(choice: dict[str, Any]) -> list[Any] | None:
    """The choice's `logprobs.content` list, or None when it has none."""
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        entries: list[Any] = logprobs["content"]
        return entries
    return None


class ShownLogprobs:
    """For one choice: the raw text seen so far, and the entries not yet shown or dropped."""

    def __init__(self) -> None:
        self._raw = ""
        self._shown_end = 0
        self._pending: list[tuple[int, int, Any]] = []  # (start, end) in the raw text, entry

    def take(self, raw: str, entries: list[Any] | None) -> None:
        """Record an upstream piece of text and the entries that came with it."""
        start = len(self._raw)
        self._raw += raw
        if not entries:
            return
        tokens = [e.get("token") if isinstance(e, dict) else None for e in entries]
        if all(isinstance(t, str) for t in tokens) and "".join(tokens) == raw:  # type: ignore[arg-type]
            at = start
            for entry, token in zip(entries, tokens, strict=True):
                assert isinstance(token, str)
                self._pending.append((at, at + len(token), entry))
                at += len(token)
        else:
            self._pending.extend((start, start + len(raw), entry) for entry in entries)

    def shown(self, text: str) -> list[Any]:
        """The entries of `text`, the next piece the client sees; earlier unshown entries are dropped."""
        if not text:
            return []
        at = self._raw.rfind(text, self._shown_end)
        if at == -1:
            return []
        end = at + len(text)
        out = [e for s, t, e in self._pending if s < end and (t > at or (s == t and s >= at))]
        self._pending = [(s, t, e) for s, t, e in self._pending if s >= end]
        self._shown_end = end
        return out


def trim_message_logprobs(choice: dict[str, Any], raw: str, shown: str) -> None:
    """A whole (non-streamed) choice: keep the entries of `shown`, the final text made from `raw`."""
    entries = logprob_entries(choice)
    if entries is None or shown == raw:
        return
    aligner = ShownLogprobs()
    aligner.take(raw, entries)
    choice["logprobs"]["content"] = aligner.shown(shown)
