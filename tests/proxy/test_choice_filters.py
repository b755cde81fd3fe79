"""ChoiceFilters with RPM's real reasoning filter: every choice filtered, held-back text before its finish."""

from __future__ import annotations

from typing import Any

from proxy.entrypoints.chat.choice_filters import ChoiceFilters
from reasoning.rpm.generate import ReasoningStreamFilter


def _event(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", **extra,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def _flatten(events: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
    return [(c["index"], c["delta"].get("content", ""), c["finish_reason"]) for e in events for c in e["choices"]]


def test_a_finishing_chunk_with_content_and_a_tail_keeps_the_text_in_order() -> None:
    filters = ChoiceFilters(lambda: [ReasoningStreamFilter()])
    out = filters.apply(_event(0, {"role": "assistant", "content": "Four <"}))
    out += filters.apply(_event(1, {"content": "<reasoning>hidden"}))
    # Choice 0's last chunk shows "stars" and finishes while "<re" is held as a possible tag.
    out += filters.apply(_event(0, {"content": " stars <re"}, "stop"))
    out += filters.apply({"id": "c1", "choices": [], "usage": {"total_tokens": 3}})
    flat = _flatten(out)
    assert flat == [(0, "Four ", None), (1, "", None), (0, "< stars <re", None), (0, "", "stop"), (1, "hidden", None)]
    # Choice 1 never finished: its tail went out before the usage chunk, which is last.
    assert out[-1]["usage"] == {"total_tokens": 3} and "usage" not in out[-2]


def test_the_stream_end_flushes_unfinished_choices_once() -> None:
    filters = ChoiceFilters(lambda: [ReasoningStreamFilter()])
    filters.apply(_event(2, {"content": "<reasoning>a\nanswer"}, rapport={"x": 1}))
    tails = filters.tail_chunks()
    assert _flatten(tails) == [(2, "answer", None)] and "rapport" not in tails[0]
    assert filters.tail_chunks() == []
