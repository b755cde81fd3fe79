"""What VAS can steer: a request needing more goes the plain path, with a reason naming what it needs."""

from __future__ import annotations

from typing import Any

import pytest

from reasoning.vas.request_fit import text_messages, unsupported

USER = {"role": "user", "content": "Hi"}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tools"),
        ({"functions": [{"name": "f"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 3}, "n=3"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "audio"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]}, "tool turns"),
        ({"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}, "tool turns"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "non-text"),
    ],
)
def test_what_vas_cannot_steer_is_named(extra: dict[str, Any], reason: str) -> None:
    found = unsupported({"messages": [USER], **extra})
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "extra",
    [{}, {"n": 1}, {"tool_choice": "none"}, {"response_format": {"type": "text"}}, {"presence_penalty": 0},
     {"logprobs": False}, {"stop": ["x"]}, {"stream_options": {"include_usage": True}}, {"tools": []}],
)
def test_what_vas_can_steer_passes(extra: dict[str, Any]) -> None:
    assert unsupported({"messages": [USER], **extra}) is None


def test_text_messages_keep_roles_text_and_names() -> None:
    body = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."},
                                                           {"type": "text", "text": "Be kind."}]},
                         {"role": "user", "name": "ann", "content": "Hi"}]}
    assert text_messages(body) == [{"role": "developer", "content": "Be brief.\nBe kind."},
                                   {"role": "user", "content": "Hi", "name": "ann"}]
