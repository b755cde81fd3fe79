"""Bounded upstream output (issue 13, point 5): what Rapport stores or re-feeds from a utility LLM is cut to
its cap on Rapport's side, whatever the upstream did with `max_tokens`.

The scripted upstream ignores `max_tokens`: by default it echoes the whole prompt back ("echo: <prompt>"),
which is what made each summary job feed the previous summary back and store the reply whole (the summary
doubled every job). Scripted replies here are also far longer than any budget.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from memory.llm import CHARS_PER_TOKEN, DEFAULT_MAX_TOKENS, LLMResult, bounded, cap_text
from reasoning.vas.rewards.judge import LLMJudgeReward
from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply

TENANT = "tenant-a"
MEMORY_ONLY = ("proxy.stages.memory_plugin:build",)
RPM_ONLY = ("proxy.stages.rpm_plugin:build",)
SUMMARY_MARKER = "You keep notes about one user"


class LongWinded:
    """A utility LLM that ignores its token budget: every reply is `text`, and it records the options."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.options: list[dict[str, Any]] = []

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        self.options.append(dict(options))
        return LLMResult(text=self.text)


async def test_replies_are_cut_to_the_cap_of_their_max_tokens(caplog: pytest.LogCaptureFixture) -> None:
    inner = LongWinded("word " * 10_000)
    llm = bounded(inner)
    caplog.set_level(logging.WARNING, logger="rapport.llm")
    result = await llm.chat([{"role": "user", "content": "hi"}], max_tokens=50)
    assert result.truncated and len(result.text) == 50 * CHARS_PER_TOKEN
    assert result.text == inner.text[: 50 * CHARS_PER_TOKEN]
    assert any("cut to 300" in r.getMessage() for r in caplog.records)
    # A call that names no budget gets one, sent upstream as well.
    result = await llm.chat([{"role": "user", "content": "hi"}])
    assert inner.options[-1]["max_tokens"] == DEFAULT_MAX_TOKENS
    assert len(result.text) == DEFAULT_MAX_TOKENS * CHARS_PER_TOKEN
    # max_completion_tokens counts as the budget too; a reply within the cap is untouched.
    inner.text = "short"
    result = await llm.chat([{"role": "user", "content": "hi"}], max_completion_tokens=2)
    assert result.text == "short" and not result.truncated
    assert bounded(llm) is llm


def test_cap_text_at_a_word_stays_within_the_limit() -> None:
    text, cut = cap_text("alpha beta gamma delta epsilon", 20, at_word=True)
    assert cut and text == "alpha beta gamma…" and len(text) <= 20
    assert cap_text("short", 17, at_word=True) == ("short", False)
    text, cut = cap_text("x" * 100, 10, at_word=True)
    assert cut and len(text) == 10 and text.endswith("…")


async def test_a_judge_reads_only_the_head_of_a_runaway_reply() -> None:
    # The rating the upstream buried after 5000 characters is past the 4-token cap: unparseable, so neutral.
    reward = LLMJudgeReward(LongWinded("x" * 5000 + " 9"))  # type: ignore[arg-type]
    assert await reward.ascore("q", "a") == 0.5
    reward = LLMJudgeReward(LongWinded("9 " + "x" * 5000))  # type: ignore[arg-type]
    assert await reward.ascore("q", "a") == 8 / 9


def _summary_prompts(upstream: Any) -> list[str]:
    return [
        str(r.json["messages"][0]["content"])
        for r in upstream.requests
        if r.path.endswith("/chat/completions") and SUMMARY_MARKER in str(r.json["messages"][0]["content"])
    ]


def test_summary_jobs_in_a_row_stay_capped_with_an_echo_upstream(
    make_rapport: Any, scripted_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    h = make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000, "summary_max_words": 60})
    cap = h.settings.memory.summary_char_cap
    assert cap == 600
    with admin(h) as a:
        for i in range(6):
            text = f"Fact {i}: I like dish number {i} with extra spice. " * 8
            r = a.post("/admin/users/erin/memories", params={"tenant": TENANT}, json={"text": text})
            assert r.status_code == 201, r.text
        scripted_upstream.reset()
        for job in range(1, 6):
            # No scripted reply: the upstream echoes the whole summary prompt back, ignoring max_tokens.
            r = a.post("/admin/users/erin/summaries/regenerate", params={"tenant": TENANT})
            assert r.status_code == 202, r.text
            wait_until(
                lambda job=job: len(a.get("/admin/users/erin/summaries", params={"tenant": TENANT}).json()["data"])
                == job
            )
        summaries = a.get("/admin/users/erin/summaries", params={"tenant": TENANT}).json()["data"]
    assert [s["version"] for s in summaries] == [5, 4, 3, 2, 1]
    prompts = _summary_prompts(scripted_upstream)
    assert len(prompts) == 5
    # Each prompt was longer than the reply cap, so every echoed reply was cut: the summary kept its cap.
    assert all(len(p) > cap for p in prompts)
    assert all(len(s["text"]) <= cap for s in summaries), [len(s["text"]) for s in summaries]
    # The next prompt does not grow: beyond the first (no previous version) it differs only by the quoted
    # previous summary, which is at most the cap (at most doubled by JSON escaping).
    assert all(len(p) <= len(prompts[0]) + 2 * cap + 2 for p in prompts), [len(p) for p in prompts]
    assert max(len(p) for p in prompts[1:]) - min(len(p) for p in prompts[1:]) <= 2 * cap
    # The budget was asked for, the upstream ignored it, and the cut was logged.
    assert all(r.json.get("max_tokens") == h.settings.memory.summary_max_tokens for r in scripted_upstream.requests)
    assert any("cut to" in r.getMessage() for r in caplog.records)


HISTORY = [
    {"input": "Rate: Blue Fin, a seafood restaurant, expensive.", "response": "5"},
    {"input": "Rate: Green Leaf, a vegan restaurant, cheap.", "response": "2"},
    {"input": "Rate: Pearl, a seafood restaurant, cheap.", "response": "4"},
]
PADDING = " and so on" * 3000  # 30 000 characters after each reply: far past every budget
EXTRACTIONS = [
    '{"features": [{"name": "cuisine", "value": "seafood"}, {"name": "price", "value": "expensive"}]}' + PADDING,
    '{"features": [{"name": "cuisine", "value": "vegan"}, {"name": "price", "value": "cheap"}]}' + PADDING,
    '{"features": [{"name": "cuisine", "value": "seafood"}, {"name": "price", "value": "cheap"}]}' + PADDING,
]
PATH = "Seafood is what this person loves, whatever the price. " * 600  # plain prose, no JSON


def _decoded(line: str, prefix: str) -> str:
    value = json.loads(line[len(prefix) :])
    assert isinstance(value, str)
    return value


def test_rpm_build_in_llm_mode_stores_capped_output(make_rapport: Any, scripted_upstream: Any) -> None:
    rpm = {"construction_mode": "llm", "reasoning_max_tokens": 100, "path_max_chars": 400}
    h = make_rapport(plugins=RPM_ONLY, rpm=rpm)
    scripted_upstream.script(*(Reply(content=c) for c in EXTRACTIONS), *(Reply(content=PATH) for _ in HISTORY))
    with admin(h) as a:
        r = a.post(f"/admin/users/alice/history?tenant={TENANT}", json={"items": HISTORY})
        assert r.status_code == 201, r.text
        wait_until(lambda: a.get(f"/admin/users/alice/rpm?tenant={TENANT}").json()["entries"] == {"done": 3})
        paths = a.get(f"/admin/users/alice/rpm/paths?tenant={TENANT}").json()["data"]
        features = a.get(f"/admin/users/alice/rpm/features?tenant={TENANT}").json()["data"]
    # The extraction replies were cut to their cap (extract_max_tokens * 6 characters), and still parsed.
    assert len(features) == 6 and {f["value"] for f in features} == {"seafood", "vegan", "expensive", "cheap"}
    # The prose paths were cut, first to the call's cap and then to path_max_chars, and kept (not rejected).
    assert [p["source"] for p in paths] == ["llm", "llm", "llm"]
    assert all(len(p["text"]) <= 400 and p["text"].startswith("Seafood is what") for p in paths)
    utility = [r.json for r in scripted_upstream.requests]
    assert [b["max_tokens"] for b in utility] == [256, 256, 256, 100, 100, 100]

    # What is re-fed: a conditioned request shows the capped paths, so its prompt does not grow with them.
    scripted_upstream.reset()
    with admin(h) as a:
        client_body = {
            "model": "test-model", "user": "alice", "messages": [{"role": "user", "content": "Rate: Dock 9, seafood."}],
            "rapport": {"rpm": {"mode": "cheap", "top_k": 3}, "record": False},
        }
        r = a.post("/v1/chat/completions", json=client_body, headers={"Authorization": f"Bearer {h.api_key}"})
        assert r.status_code == 200, r.text
    system = scripted_upstream.requests[-1].json["messages"][0]["content"]
    shown = [_decoded(line, "Reasoning: ") for line in system.splitlines() if line.startswith("Reasoning: ")]
    assert len(shown) == 3 and all(len(p) <= 400 for p in shown)
