"""A passed-through Responses stream, event by event: the upstream's typed events with Rapport's ids.

The upstream's `response.*` lifecycle events carry its own response object (its id, its echo of the
request Rapport sent, with the memory block in `instructions`), so they are replaced by Rapport's: the
serving sends `response.created`/`in_progress` first and `response.completed`/`incomplete` last. Every
other event passes through with its item ids mapped to Rapport's and its sequence number renumbered (the
stages may hold text back or release it later, which changes the count). Text deltas go through the
stages' filters, one chain per content part, so RPM's reasoning never reaches the client; a filter's held
tail goes out as one more delta just before that part's `output_text.done`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.entrypoints.responses.passthrough_wire import ItemIds, rewrite_item, usage_of
from proxy.pipeline.stage import TextFilter

# Lifecycle events Rapport sends itself, from its own response object.
_OWN_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


@dataclass
class _Part:
    """One output_text content part being streamed: its filter chain and the text shown so far."""

    chain: list[TextFilter]
    shown: list[str] = field(default_factory=list)
    closed: bool = False


@dataclass
class PassthroughStream:
    base: dict[str, Any]
    make_chain: Callable[[], list[TextFilter]]
    finalize: Callable[[str], str]
    ids: ItemIds = field(default_factory=ItemIds)
    sequence: int = 0
    parts: dict[tuple[str, int], _Part] = field(default_factory=dict)
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    # What the upstream's final event said (its output is the fallback when no item.done came).
    final: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {**fields, "type": kind, "sequence_number": self.sequence - 1}

    def start(self) -> list[dict[str, Any]]:
        shell = {**self.base, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
        return [self.event("response.created", response=shell), self.event("response.in_progress", response=shell)]

    def translate(self, upstream: dict[str, Any]) -> list[dict[str, Any]]:
        """The events to send for one upstream event."""
        kind = str(upstream.get("type"))
        if kind in _OWN_EVENTS:
            return []
        if kind in _FINAL_EVENTS:
            response = upstream.get("response")
            self.final = response if isinstance(response, dict) else {}
            return []
        fields = {k: v for k, v in upstream.items() if k not in ("type", "sequence_number")}
        item_id: str | None = None
        if "item_id" in fields:
            item_id = self.ids.of(fields["item_id"], None)
            fields["item_id"] = item_id
        out: list[dict[str, Any]] = []
        if kind == "response.output_text.delta" and item_id is not None:
            part = self._part(item_id, fields.get("content_index", 0))
            raw = str(fields.get("delta") or "")
            shown = _feed(part.chain, raw)
            if not shown:
                return []
            part.shown.append(shown)
            if shown != raw:
                fields["logprobs"] = []  # the upstream's entries describe text the client does not see
            return [self.event(kind, **{**fields, "delta": shown})]
        if kind in ("response.output_text.done", "response.content_part.done") and item_id is not None:
            index = fields.get("content_index", 0)
            out.extend(self._close(item_id, index, fields.get("output_index", 0)))
            text = "".join(self._part(item_id, index).shown)
            if kind == "response.output_text.done":
                fields["text"] = text
            elif isinstance(fields.get("part"), dict) and fields["part"].get("type") == "output_text":
                fields["part"] = {**fields["part"], "text": text}
        if kind in ("response.output_item.added", "response.output_item.done") and isinstance(fields.get("item"), dict):
            item = fields["item"]
            if kind == "response.output_item.done":
                # Parts whose done events did not come (or came out of order) give up their tails now.
                own = self.ids.of(item.get("id"), item.get("type"))
                for owner, index in [key for key in self.parts if key[0] == own]:
                    out.extend(self._close(owner, index, fields.get("output_index", 0)))
            fields["item"] = rewrite_item(item, self.ids, self._text)
            if kind == "response.output_item.done":
                self.items[int(fields.get("output_index") or 0)] = fields["item"]
        out.append(self.event(kind, **fields))
        return out

    def _part(self, item_id: str, index: Any) -> _Part:
        key = (item_id, int(index or 0))
        if key not in self.parts:
            self.parts[key] = _Part(self.make_chain())
        return self.parts[key]

    def _close(self, item_id: str, index: Any, output_index: Any) -> list[dict[str, Any]]:
        """The held tail of one part as a last delta (once), before the events that end that part."""
        part = self._part(item_id, index)
        if part.closed:
            return []
        part.closed = True
        tail = _flush(part.chain)
        if not tail:
            return []
        part.shown.append(tail)
        return [
            self.event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=output_index,
                content_index=int(index or 0),
                delta=tail,
                logprobs=[],
            )
        ]

    def _text(self, item_id: str, index: int, raw: str) -> str:
        """A part's text: what was streamed of it, else (nothing streamed) the stages' rewriting of it."""
        part = self.parts.get((item_id, index))
        return "".join(part.shown) if part is not None else self.finalize(raw)

    def output(self) -> list[dict[str, Any]]:
        """The final output: the items as they were completed, else the upstream's final output rewritten."""
        if self.items:
            return [self.items[i] for i in sorted(self.items)]
        output = (self.final or {}).get("output")
        return [rewrite_item(item, self.ids, self._text) for item in output or [] if isinstance(item, dict)]

    def usage(self) -> dict[str, Any] | None:
        return usage_of((self.final or {}).get("usage"))

    def status(self) -> tuple[Any, Any]:
        final = self.final or {}
        return final.get("status"), final.get("incomplete_details")


def _feed(chain: list[TextFilter], delta: str) -> str:
    for f in chain:
        delta = f.feed(delta)
    return delta


def _flush(chain: list[TextFilter]) -> str:
    """What a chain still holds: each filter's tail, passed through the filters after it."""
    tail = ""
    for f in chain:
        tail = (f.feed(tail) if tail else "") + f.flush()
    return tail
