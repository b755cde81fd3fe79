"""Log-probabilities follow the text a stage's filter shows (the defect the SDK matrix found: with RPM's
reasoning removed from the content, its tokens still reached the client in `choice.logprobs`).

Edge cases on ChoiceFilters with RPM's real filter, and on a whole message; the matrix covers the SDK path.
"""

from __future__ import annotations

from typing import Any

from proxy.entrypoints.chat.choice_filters import ChoiceFilters
from proxy.entrypoints.chat.shown_logprobs import trim_message_logprobs
from reasoning.rpm.generate import ReasoningStreamFilter, strip_reasoning
from tests.support.sdk_cases import ANSWERS, chunk_event, logprob_entries, tokens_of, upstream_text


def _lp_event(index: int, text: str, entries: list[dict[str, Any]] | None, finish: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "delta": {"content": text}, "finish_reason": finish}
    if entries is not None:
        choice["logprobs"] = {"content": entries, "refusal": None}
    return chunk_event([choice])


def _shown(events: list[dict[str, Any]]) -> tuple[str, list[str]]:
    text, tokens = "", []
    for event in events:
        for choice in event["choices"]:
            text += choice["delta"].get("content") or ""
            tokens += [e["token"] for e in (choice.get("logprobs") or {}).get("content") or []]
    return text, tokens


def _stream_through_filters(tokens: list[str], finish_with_last: bool = True) -> tuple[str, list[str]]:
    filters = ChoiceFilters(lambda: [ReasoningStreamFilter()])
    out: list[dict[str, Any]] = []
    for k, token in enumerate(tokens):
        last = finish_with_last and k == len(tokens) - 1
        out += filters.apply(_lp_event(0, token, logprob_entries(token), "stop" if last else None))
    out += filters.tail_chunks()
    return _shown(out)


def test_held_back_text_that_was_no_tag_keeps_its_entries() -> None:
    # "<" might start a tag, so it is held; it turns out to be text, and goes out with its entry.
    text, tokens = _stream_through_filters(["Cheap", " <", " 10", "$", " and", " good", "."])
    assert text == "Cheap < 10$ and good." and tokens == tokens_of("Cheap < 10$ and good.")


def test_an_unclosed_reasoning_block_shows_its_last_line_with_that_lines_entries() -> None:
    raw = "<reasoning>Seafood, cheap.\nI would give it 4"
    text, tokens = _stream_through_filters(tokens_of(raw), finish_with_last=False)
    assert text == "I would give it 4" and tokens == tokens_of("I would give it 4")


def test_entries_that_do_not_add_up_to_their_text_go_with_their_whole_piece() -> None:
    # Byte tokens: the entries' text is not the delta's, so they are placed on their piece as a whole.
    byte_entry = {"token": "\\xe4", "logprob": -1.0, "bytes": [228], "top_logprobs": []}
    filters = ChoiceFilters(lambda: [ReasoningStreamFilter()])
    out = filters.apply(_lp_event(0, "<reasoning>x</reasoning>", [byte_entry, byte_entry]))
    out += filters.apply(_lp_event(0, "\u00e4!", [byte_entry, byte_entry], "stop"))
    assert _shown(out) == ("\u00e4!", ["\\xe4", "\\xe4"])


def test_a_whole_message_keeps_only_the_answers_entries() -> None:
    raw = upstream_text(0, "n2", rpm=True)
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": raw},
              "logprobs": {"content": logprob_entries(raw), "refusal": None}}
    trim_message_logprobs(choice, raw, strip_reasoning(raw))
    assert [e["token"] for e in choice["logprobs"]["content"]] == tokens_of(ANSWERS[0])
    # Nothing removed: the entries are the upstream's, untouched.
    plain: dict[str, Any] = {"index": 0, "logprobs": {"content": logprob_entries(ANSWERS[1]), "refusal": None}}
    trim_message_logprobs(plain, ANSWERS[1], ANSWERS[1])
    assert plain["logprobs"]["content"] == logprob_entries(ANSWERS[1])
