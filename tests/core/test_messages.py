"""rapport.core.messages: one reading of message text and one way of extending the leading system message."""

from __future__ import annotations

import copy
from typing import Any

from rapport.core.messages import append_system, last_user_text, text_of

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_text_of_reads_strings_and_text_parts_only() -> None:
    assert text_of("plain") == "plain"
    assert text_of([{"type": "text", "text": "one"}, IMAGE, {"type": "input_text", "text": "two"}]) == "one\ntwo"
    assert text_of([IMAGE]) == "" and text_of(None) == "" and text_of([{"type": "text"}, "odd"]) == ""


def test_last_user_text_is_the_last_user_message_whatever_follows() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "c", "content": "result"},
    ]
    assert last_user_text(messages) == "a\nb"
    assert last_user_text([{"role": "user", "content": [IMAGE]}]) == ""
    assert last_user_text([{"role": "system", "content": "s"}]) == ""


def test_append_system_extends_the_one_leading_message_in_every_shape() -> None:
    user = {"role": "user", "content": "hi"}
    cases: list[tuple[dict[str, Any] | None, Any]] = [
        (None, "A\n\nB"),
        ({"role": "system", "content": "Be brief."}, "Be brief.\n\nA\n\nB"),
        ({"role": "developer", "content": "Be brief."}, "Be brief.\n\nA\n\nB"),
        ({"role": "system", "content": ""}, "A\n\nB"),
        (
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        ),
    ]
    for lead, expected in cases:
        messages = ([lead] if lead else []) + [user]
        before = copy.deepcopy(messages)
        out = append_system(append_system(messages, "A"), "B")
        assert messages == before, "the input is not mutated"
        assert len(out) == 2 and out[1] == user and out[0]["content"] == expected
        assert out[0]["role"] == (lead["role"] if lead else "system")


def test_append_system_with_nothing_to_add_returns_the_messages() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert append_system(messages, "") is messages
    # A system message that is not first stays where it is; the addition leads.
    later = [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]
    assert append_system(later, "A") == [{"role": "system", "content": "A"}, *later]
