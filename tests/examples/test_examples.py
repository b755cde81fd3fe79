"""Every script in examples/ runs as a user would run it (`python examples/X.py`, in a subprocess), against a real
Rapport on a socket in front of the scripted upstream, with a named user and the stages on. Each test asserts on
what the example printed and on what reached the upstream, so an example that stops working fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import admin
from tests.support.upstream import Reply, ScriptedUpstream, completion
from tests.vas.scripted_value import ScriptedValueServer, ValueScript

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TENANT = "tenant-a"  # the tenant of the test API key
MODEL = "test-model"
# Cheap RPM construction and request-time extraction: no utility-LLM calls, so the script holds only the answers.
RPM_ON = {"enabled_by_default": True, "construction_mode": "cheap", "request_mode": "cheap"}


def run_example(name: str, rapport: Any, timeout: float = 120.0, **env: str) -> str:
    """Run examples/NAME as a user would, with the environment pointing at `rapport`; return its stdout."""
    environment = {
        **os.environ,
        "RAPPORT_BASE_URL": rapport.base_url,
        "RAPPORT_URL": rapport.url,
        "RAPPORT_API_KEY": rapport.api_key,
        "RAPPORT_ADMIN_KEY": rapport.admin_key,
        "RAPPORT_TENANT": TENANT,
        "RAPPORT_MODEL": MODEL,
        **env,
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], env=environment, capture_output=True, text=True, timeout=timeout,
        cwd=EXAMPLES.parent,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def chats(upstream: ScriptedUpstream) -> list[dict[str, Any]]:
    return [r.json for r in upstream.requests if r.path.endswith("/chat/completions")]


def system_text(body: dict[str, Any]) -> str:
    first = body["messages"][0]
    return str(first["content"]) if first["role"] == "system" else ""


def printed(out: str, label: str) -> str:
    """The text after `label: ` on the example's line that starts with it."""
    line = next(line for line in out.splitlines() if line.startswith(f"{label}: "))
    return line[len(label) + 2 :]


def test_openai_sdk_chat_stream_and_responses(make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream) -> None:
    rapport = make_rapport()
    out = run_example("openai_sdk.py", rapport)
    assert printed(out, "chat") == "echo: I'm vegetarian and I love spicy food."
    assert printed(out, "stream") == "echo: Say hello in French."
    assert printed(out, "response").endswith("echo: My name is Ada.")
    assert printed(out, "follow-up") == "echo: What is my name?"
    assert printed(out, "streamed response").startswith("echo: Name a colour.")
    sent = chats(scripted_upstream)
    assert len(sent) == 5 and all(body["user"] == "alice" for body in sent)
    assert sent[1]["stream"] is True
    # previous_response_id: Rapport sent the earlier turns upstream, the client only the new input.
    turns = [(m["role"], m["content"]) for m in sent[3]["messages"] if m["role"] != "system"]
    assert turns == [("user", "My name is Ada."), ("assistant", "echo: My name is Ada."), ("user", "What is my name?")]
    assert sent[4]["stream"] is True and sent[4]["messages"][-1] == {"role": "user", "content": "Name a colour."}


def test_memory_sdk_remembers_searches_edits_exports_and_forgets(
    make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    rapport = make_rapport()
    out = run_example("memory_sdk.py", rapport)
    # The second call's upstream prompt carries the first exchange, retrieved by memory.
    second = chats(scripted_upstream)[1]
    assert second["user"] == "alice" and "vegetarian" in system_text(second)
    assert printed(out, "assistant") == "echo: What should I make for dinner?"
    assert any("vegetarian" in line for line in out.splitlines() if line.startswith("search: "))
    assert printed(out, "edited") == "Severely allergic to peanuts."
    assert "memory" in printed(out, "exported parts").split(", ")
    assert printed(out, "left after forget") == "0"
    with admin(rapport) as http:
        listing = http.get("/admin/users/alice/memories", params={"tenant": TENANT})
        assert listing.status_code == 404 or listing.json()["data"] == []


def test_async_sdk_two_users_at_once(make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream) -> None:
    rapport = make_rapport()
    out = run_example("async_sdk.py", rapport)
    assert printed(out, "bob got") == "echo: I run marathons and eat pasta before races."
    assert printed(out, "carol got") == "echo: I'm learning Japanese for a trip to Kyoto."
    assert "marathons" in printed(out, "bob remembers") and "Kyoto" not in printed(out, "bob remembers")
    assert "Kyoto" in printed(out, "carol remembers")
    by_user = {body["user"]: body["messages"][-1]["content"] for body in chats(scripted_upstream)}
    assert by_user == {"bob": "I run marathons and eat pasta before races.", "carol": "I'm learning Japanese for a trip to Kyoto."}


def test_rpm_imported_history_conditions_a_request_and_takes_feedback(
    make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    rapport = make_rapport(rpm=RPM_ON)
    scripted_upstream.script(Reply(body={**completion("Grill Palace.", "scripted"), "id": "chatcmpl-rpm-example"}))
    out = run_example("rpm_history.py", rapport)
    assert printed(out, "imported") == "3" and printed(out, "built") == "{'done': 3}"
    [sent] = chats(scripted_upstream)
    assert sent["user"] == "dana" and sent["messages"][-1]["content"].startswith("Pick a restaurant for dinner")
    system = system_text(sent)
    assert "Pick a restaurant for" in system and ("Green Leaf" in system or "Veggie Bowl" in system)
    assert printed(out, "answer") == "Grill Palace." and int(printed(out, "conditioned on").split()[0]) >= 1
    assert printed(out, "feedback became entries").startswith("[") and printed(out, "history now") == "4"
    with admin(rapport) as http:
        entries = http.get("/admin/users/dana/rpm/history", params={"tenant": TENANT}).json()["data"]
    feedback = [e for e in entries if e["source"].startswith("feedback:")]
    assert [e["response"] for e in feedback] == ["Garden Table, it has vegetarian mains."]


@pytest.fixture()
def value_server() -> Any:
    server = ScriptedValueServer().start()
    yield server
    server.stop()


def vas_step(*tokens: tuple[str, float]) -> Reply:
    """One VAS token step: the upstream's answer to a `max_tokens=1, top_logprobs=k` call (chat_prefill)."""
    greedy = max(tokens, key=lambda t: t[1])
    top = [{"token": t, "logprob": lp} for t, lp in tokens]
    return Reply(body={
        "id": "chatcmpl-step", "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": greedy[0]},
                     "logprobs": {"content": [{"token": greedy[0], "logprob": greedy[1], "top_logprobs": top}]},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 17, "completion_tokens": 1, "total_tokens": 18},
    })


def test_vas_steers_with_a_named_value_model(
    make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream, value_server: ScriptedValueServer
) -> None:
    # The scripted value server stands in for a value model trained on the shipped sentiment reward (training one
    # takes minutes): it values a text 1.0 when it ends with a liked word, so the steered choice is known.
    value_server.reset(ValueScript(liked=("Sunny", "Bright")))
    rapport = make_rapport(vas={
        "value_models": [{"name": "sentiment", "backend": "vllm", "url": value_server.url, "served_name": "v"}],
        "base_api": "chat_prefill", "max_tokens": 16,
    })
    end = ("<|im_end|>", -0.1), ("!", -1.0)
    scripted_upstream.script(vas_step(("Rainy", -0.1), ("Sunny", -2.0)), vas_step(*end),
                             vas_step(("Dull", -0.1), ("Bright", -2.0)), vas_step(*end))
    out = run_example("vas_reward.py", rapport)
    assert printed(out, "value models") == "[('sentiment', True)]"
    # Greedy decoding would have said "Rainy" and "Dull"; the value model turned both answers.
    assert printed(out, "steered") == "Sunny"
    assert printed(out, "weights") == "{'sentiment': 1.0} from profile | beta: 4.0 | steps: 2"
    assert printed(out, "per request") == "Bright | beta: 8.0 | from request"
    sent = chats(scripted_upstream)
    assert len(sent) == 4 and all(body["max_tokens"] == 1 for body in sent)
    assert sent[1]["messages"][-1] == {"role": "assistant", "content": "Sunny"}
    assert sent[2]["top_logprobs"] == 5 and "morning" in sent[2]["messages"][-1]["content"]
    assert value_server.calls >= 2


def test_langchain_chat_openai_with_swapped_base_url(
    make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    rapport = make_rapport()
    out = run_example("langchain_chat.py", rapport)
    assert printed(out, "invoke") == "echo: I only travel by train."
    assert printed(out, "stream") == "echo: Plan a weekend trip for me."
    first, second = chats(scripted_upstream)
    assert first["user"] == second["user"] == "frank"
    assert system_text(first).startswith("You are a travel agent.") and second["stream"] is True
    assert first.get("max_tokens", first.get("max_completion_tokens")) == 60


def test_openai_agents_sdk_runs_a_tool_through_responses(
    make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream
) -> None:
    rapport = make_rapport()
    call = {"id": "call_1", "type": "function", "function": {"name": "train_times", "arguments": '{"city": "Lyon"}'}}
    scripted_upstream.script(Reply(body=completion("", "scripted", tool_calls=[call])),
                             Reply(content="Take the 13:40 to Lyon."))
    out = run_example("openai_agents.py", rapport)
    assert printed(out, "agent") == "Take the 13:40 to Lyon."
    assert printed(out, "last response").startswith("resp_")
    first, second = chats(scripted_upstream)
    assert first["user"] == second["user"] == "grace"
    assert [t["function"]["name"] for t in first["tools"]] == ["train_times"]
    assert system_text(first).startswith("Help the user plan trips.")
    tool_turn = next(m for m in second["messages"] if m["role"] == "tool")
    assert tool_turn["tool_call_id"] == "call_1" and tool_turn["content"] == "Trains to Lyon: 09:15, 13:40, 18:05."
