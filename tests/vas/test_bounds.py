"""VAS within bounds and honest about what it cannot honour, through the official SDK against Rapport.

The base model is the scripted upstream (VAS's `chat_prefill` client, each step's top log-probabilities
scripted), the value model the scripted value server, so each test fixes what every step sees and
asserts both what reached the upstream and what the client got.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from reasoning.vas.backends import TorchSession
from reasoning.vas.config import VASSettings
from reasoning.vas.engine import VASEngine
from tests.support.upstream import Reply, ScriptedUpstream
from tests.vas.scripted_value import ScriptedValueServer, ValueScript

USER = "alice"
PROMPT = [{"role": "user", "content": "Greet me."}]
VAS_PLUGIN = ("proxy.stages.vas_plugin:build",)


def step(*tokens: tuple[str, float], finish: str = "length", prompt_tokens: int = 17) -> Reply:
    """One token step: the scripted upstream's answer to a `max_tokens=1, top_logprobs=k` call."""
    greedy = max(tokens, key=lambda t: t[1])
    top = [{"token": t, "logprob": lp} for t, lp in tokens]
    return Reply(body={
        "id": "chatcmpl-step", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": greedy[0]},
                     "logprobs": {"content": [{"token": greedy[0], "logprob": greedy[1], "top_logprobs": top}]},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    })


def plain(text: str, finish: str = "stop") -> Reply:
    """A plain completion (the finish of an answer whose steering stopped)."""
    return Reply(body={
        "id": "chatcmpl-plain", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
    })


@pytest.fixture(scope="module")
def _value_server() -> Iterator[ScriptedValueServer]:
    server = ScriptedValueServer().start()
    yield server
    server.stop()


@pytest.fixture()
def values(_value_server: ScriptedValueServer) -> ScriptedValueServer:
    _value_server.reset()
    return _value_server


@pytest.fixture()
def vas_rapport(make_rapport: Callable[..., Any], values: ScriptedValueServer) -> Callable[..., Any]:
    def start(**vas: Any) -> Any:
        settings = {"value_models": [{"name": "liked", "backend": "vllm", "url": values.url, "served_name": "v"}],
                    "base_api": "chat_prefill", "beta": 50.0, "max_tokens": 16, **vas}
        return make_rapport(plugins=VAS_PLUGIN, vas=settings)

    return start


def _client(handle: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=handle.base_url, api_key=handle.api_key, max_retries=0, timeout=60)


def _create(handle: Any, vas: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", PROMPT)
    return _client(handle).chat.completions.create(
        model="test-model", user=USER, temperature=0, extra_body={"rapport": {"vas": vas or {"top_k": 5}}}, **kwargs
    )


def _vas(data: Any) -> dict[str, Any]:
    extra = data if isinstance(data, dict) else data.model_extra
    stage = next(s for s in extra["rapport"]["stages"] if s["name"] == "vas")
    detail: dict[str, Any] = stage["detail"]
    return detail


def _stream(handle: Any, vas: dict[str, Any] | None = None, **kwargs: Any) -> tuple[list[Any], str]:
    chunks = list(_create(handle, vas, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def _role_chunks(chunks: list[Any]) -> int:
    return sum(1 for c in chunks if c.choices and c.choices[0].delta.role == "assistant")


# -- steering as asked: prompt tokens, the partial answer upstream --------------------------------------


def test_steered_answer_reports_the_upstreams_prompt_tokens(
    vas_rapport: Callable[..., Any], values: ScriptedValueServer, scripted_upstream: ScriptedUpstream
) -> None:
    values.reset(ValueScript(liked=("Hello", " good")))
    scripted_upstream.script(step(("Hey", -0.1), ("Hello", -2.0)), step((" bad", -0.1), (" good", -2.5)),
                             step(("<|im_end|>", -0.1), ("!", -1.0)))
    result = _create(vas_rapport())
    assert result.choices[0].message.content == "Hello good" and result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens == 17 and result.usage.completion_tokens == 3
    assert result.usage.total_tokens == 20
    detail = _vas(result)
    assert detail["applied"] is True and detail["upstream_calls"] == 3 and "stopped" not in detail
    sent = [r.json for r in scripted_upstream.requests]
    assert len(sent) == 3 and all(r["top_logprobs"] == 5 and r["max_tokens"] == 1 for r in sent)
    assert sent[1]["messages"][-1] == {"role": "assistant", "content": "Hello"} and sent[1]["continue_final_message"]


# -- not applied where VAS cannot honour the request ----------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
]
IMAGE = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {}}}}
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "tools": ({"tools": TOOLS, "tool_choice": "auto"}, "tools"),
    "tool turns": ({"messages": TOOL_TURNS}, "tool turns"),
    "response_format": ({"response_format": SCHEMA}, "response_format"),
    "n": ({"n": 2}, "n=2"),
    "image": ({"messages": IMAGE}, "non-text"),
    "logprobs": ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("stream", [False, True])
def test_what_vas_cannot_honour_goes_the_plain_path_unchanged(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream, case: str, stream: bool
) -> None:
    fields, reason = CASES[case]
    kwargs = {"messages": PROMPT, **fields}
    if stream:
        chunks, text = _stream(vas_rapport(), **kwargs)
        detail = _vas(chunks[0])
        assert _role_chunks(chunks) == 1
    else:
        result = _create(vas_rapport(), **kwargs)
        text, detail = result.choices[0].message.content, _vas(result)
    assert detail["applied"] is False and reason in detail["reason"]
    assert len(scripted_upstream.requests) == 1  # one plain call, no VAS steps
    sent = scripted_upstream.requests[0].json
    assert sent["messages"] == kwargs["messages"] and "continue_final_message" not in sent
    for name, value in fields.items():
        assert sent[name] == value, name
    assert text.startswith("echo: ")


# -- stop, include_usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_end_the_answer_before_them(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream, stream: bool
) -> None:
    scripted_upstream.script(step(("Hello", 0.0)), step((" wor", 0.0)), step(("ld and more", 0.0)))
    handle = vas_rapport()
    if stream:
        chunks, text = _stream(handle, stop=["world", "zzz"])
        assert chunks[-1].choices[0].finish_reason == "stop"
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert pieces == ["Hello", " "]  # " wor" was held back until it turned out to start "world"
    else:
        result = _create(handle, stop="world")
        text = result.choices[0].message.content
        assert result.choices[0].finish_reason == "stop"
    assert text == "Hello "
    assert len(scripted_upstream.requests) == 3  # no step after the stop


def test_stream_sends_the_usage_chunk_when_asked(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    scripted_upstream.script(step(("Hi", 0.0)), step(("<|im_end|>", 0.0)))
    chunks, text = _stream(vas_rapport(), stream_options={"include_usage": True})
    assert text == "Hi"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (17, 2, 19)
    assert sum(1 for c in chunks if c.usage is not None) == 1


# -- a stream never restarts; no synthetic first chunk ---------------------------------------------------


def test_value_backend_failing_midway_continues_plainly_without_restart(
    vas_rapport: Callable[..., Any], values: ScriptedValueServer, scripted_upstream: ScriptedUpstream
) -> None:
    values.reset(ValueScript(liked=("Hello", " world"), fail_from_call=3))
    scripted_upstream.script(step(("Hey", -0.1), ("Hello", -2.0)), step((" there", -0.1), (" world", -2.0)),
                             step(("!", -0.1), (".", -2.0)), plain(" and more."))
    chunks, text = _stream(vas_rapport())
    assert text == "Hello world and more."
    assert _role_chunks(chunks) == 1
    final = chunks[-2] if chunks[-1].choices == [] else chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    report = (final.model_extra or {})["rapport"]["vas"]
    assert report["stopped"] == "value_backend_down" and "500" in report["stopped_reason"]
    sent = [r.json for r in scripted_upstream.requests]
    # The finish continues the same prefix, plainly: no restart from the prompt.
    assert len(sent) == 4 and "top_logprobs" not in sent[3]
    assert sent[3]["messages"][-1] == {"role": "assistant", "content": "Hello world"}


def test_stream_whose_first_step_fails_gets_a_real_status(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    scripted_upstream.script(*(Reply(kind="error", status=500) for _ in range(3)))
    handle = vas_rapport()
    with pytest.raises(openai.APIStatusError) as err:
        _create(handle, stream=True)
    assert err.value.status_code == 502


# -- operator caps and the deadline -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("best_of", 64), ("block_candidates", 64), ("top_k", 60), ("block_tokens", 1)],
)
def test_options_beyond_the_operators_caps_are_400_naming_them(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream, option: str, value: int
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _create(vas_rapport(), {option: value})
    assert err.value.body["param"] == f"rapport.vas.{option}"  # type: ignore[index]
    assert scripted_upstream.requests == []


def test_upstream_call_cap_stops_steering_and_finishes_plainly(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    scripted_upstream.script(step(("Hello", 0.0)), step((" world", 0.0)), plain(" and the rest."))
    result = _create(vas_rapport(max_upstream_calls=3))
    assert result.choices[0].message.content == "Hello world and the rest."
    detail = _vas(result)
    assert detail["stopped"] == "upstream_calls" and detail["upstream_calls"] == 3
    assert len(scripted_upstream.requests) == 3  # the cap holds, the plain finish included


def test_block_mode_respects_the_upstream_call_cap(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    scripted_upstream.script(plain("Hello", "length"), plain("Hey", "length"), plain(" and the rest."))
    result = _create(vas_rapport(max_upstream_calls=4), {"mode": "block", "block_candidates": 2, "block_tokens": 4})
    detail = _vas(result)
    assert detail["stopped"] == "upstream_calls" and len(scripted_upstream.requests) == 3
    assert result.choices[0].message.content in {"Hello and the rest.", "Hey and the rest."}


def test_value_pass_cap_stops_steering_and_finishes_plainly(
    vas_rapport: Callable[..., Any], values: ScriptedValueServer, scripted_upstream: ScriptedUpstream
) -> None:
    values.reset(ValueScript(liked=("Hello",)))
    scripted_upstream.script(step(("Hey", -0.1), ("Hello", -2.0)), plain(" there."))
    result = _create(vas_rapport(max_value_passes=1))
    assert result.choices[0].message.content == "Hello there."
    assert _vas(result)["stopped"] == "value_passes" and values.calls == 1
    assert len(scripted_upstream.requests) == 2


def test_deadline_cuts_a_slow_step_and_finishes_plainly(
    vas_rapport: Callable[..., Any], values: ScriptedValueServer, scripted_upstream: ScriptedUpstream
) -> None:
    values.reset(ValueScript(liked=("Hello",), delay_s=5.0))
    scripted_upstream.script(step(("Hey", -0.1), ("Hello", -2.0)), plain("Plain answer."))
    result = _create(vas_rapport(deadline_s=0.5))
    assert result.choices[0].message.content == "Plain answer."
    detail = _vas(result)
    assert detail["stopped"] == "deadline" and detail["ms"] < 5000
    assert scripted_upstream.requests[1].json["messages"] == PROMPT  # nothing chosen before the deadline


async def test_value_passes_run_on_the_engines_own_executor(tmp_path: Path) -> None:
    engine = VASEngine(VASSettings(value_threads=3), tmp_path)
    await asyncio.to_thread(engine.load)
    try:
        assert engine.value_executor is not None and engine.value_executor._max_workers == 3
        session = TorchSession(SimpleNamespace(executor=engine.value_executor))  # type: ignore[arg-type]

        def on_which_thread(prefix: str, continuations: list[str]) -> list[float]:
            return [float(threading.current_thread().name.startswith("vas-value"))]

        session._score = on_which_thread  # type: ignore[method-assign]
        assert await session.score("a", ["b"]) == [1.0]
    finally:
        await engine.close()


# -- llama.cpp's "" -----------------------------------------------------------------------------------------


def test_an_unconfirmed_empty_token_is_not_taken_for_the_end(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    # "" is the greedy token, but the server did not end the answer on it: a byte token, not the end.
    scripted_upstream.script(step(("Hi", 0.0)), step(("", -0.1), ("!", -3.0), finish="length"), plain(" 你好🙂"))
    result = _create(vas_rapport())
    assert result.choices[0].message.content == "Hi 你好🙂"
    detail = _vas(result)
    assert detail["stopped"] == "ambiguous_empty_token" and detail["ambiguous_empty_tokens"] == 1


def test_a_confirmed_empty_token_ends_the_answer(
    vas_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    scripted_upstream.script(step(("Hi", 0.0)), step(("", -0.1), ("!", -3.0), finish="stop"))
    result = _create(vas_rapport())
    assert result.choices[0].message.content == "Hi" and result.choices[0].finish_reason == "stop"
    assert "stopped" not in _vas(result) and len(scripted_upstream.requests) == 2
