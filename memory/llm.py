"""The small LLM interface that memory and reasoning use for offline work (summaries, extraction).

The proxy implements it over its upstream router; tests implement it with scripted answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True)
class LLMResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ChatLLM(Protocol):
    """One chat completion call; `options` are OpenAI request fields (temperature, max_tokens, ...)."""

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult: ...
