"""A scripted ChatLLM: answers each prompt from a rule list, and records every call it got."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memory.llm import LLMResult


def features_json(*pairs: tuple[str, str]) -> str:
    return json.dumps({"features": [{"name": n, "value": v, "evidence": v} for n, v in pairs]})


@dataclass
class ScriptedLLM:
    """`rules`: (substring of an extraction prompt, reply or list of successive replies).
    Other prompts (reasoning paths, anything unmatched) get `default`."""

    rules: list[tuple[str, str | list[str]]] = field(default_factory=list)
    # Rules apply to extraction prompts only: a path prompt quotes the same input text.
    marker: str = "features of it that influenced"
    default: str | Callable[[str], str] = '{"reasoning": "They weighed the features they always weigh."}'
    delay_s: float = 0.0
    calls: list[list[dict[str, Any]]] = field(default_factory=list)

    def add(self, needle: str, *replies: str) -> ScriptedLLM:
        self.rules.append((needle, list(replies)))
        return self

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        self.calls.append(messages)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the fake model's latency, to exercise the request budget
        prompt = messages[0]["content"]
        for needle, replies in self.rules:
            if needle in prompt and self.marker in prompt:
                if isinstance(replies, list):
                    # Successive calls on the same prompt (a retry) take the next reply; the last repeats.
                    n = sum(1 for c in self.calls if c[0]["content"] == prompt) - 1
                    text = replies[min(n, len(replies) - 1)]
                else:
                    text = replies
                return LLMResult(text=text, prompt_tokens=len(prompt) // 4, completion_tokens=len(text) // 4)
        text = self.default(prompt) if callable(self.default) else self.default
        return LLMResult(text=text, prompt_tokens=len(prompt) // 4, completion_tokens=len(text) // 4)

    def prompts_containing(self, needle: str) -> list[str]:
        return [c[0]["content"] for c in self.calls if needle in c[0]["content"]]
