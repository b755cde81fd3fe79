"""The small LLM interface that memory and reasoning use for offline work (summaries, extraction).

The proxy implements it over its upstream router; tests implement it with scripted answers. Whatever
implements it, callers wrap it in `bounded(...)`: an upstream may ignore `max_tokens` (an echo server, a
misconfigured model), and what comes back here is stored or fed into the next prompt, so Rapport cuts it
on its own side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("rapport.llm")

# Characters allowed per requested token. English BPE averages about 4 characters a token; 6 leaves room
# so that a reply that honoured `max_tokens` is never cut, while a reply that ignored it is cut near its
# budget instead of growing without bound.
CHARS_PER_TOKEN = 6
# The budget of a call that names none: every call is bounded, even one a caller forgot to bound.
DEFAULT_MAX_TOKENS = 1024


@dataclass(slots=True)
class LLMResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    # True when the reply was longer than the call's cap and `text` holds only its head.
    truncated: bool = False


@runtime_checkable
class ChatLLM(Protocol):
    """One chat completion call; `options` are OpenAI request fields (temperature, max_tokens, ...)."""

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult: ...


def cap_text(text: str, limit: int, *, at_word: bool = False) -> tuple[str, bool]:
    """`text` cut to at most `limit` characters, and whether it was cut.

    `at_word` backs off to the last whitespace in the final fifth (a stored summary should not end
    mid-word) and marks the cut with an ellipsis, still within `limit`.
    """
    if len(text) <= limit:
        return text, False
    if not at_word or limit < 2:
        return text[:limit], True
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space >= int(limit * 0.8):
        head = head[:space]
    return head.rstrip() + "…", True


def reply_cap(options: dict[str, Any]) -> int:
    """The character cap of a call: its `max_tokens` (or `max_completion_tokens`) times CHARS_PER_TOKEN."""
    tokens = options.get("max_tokens") or options.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    return max(1, int(tokens)) * CHARS_PER_TOKEN


class BoundedLLM:
    """A ChatLLM whose replies never exceed the cap derived from the call's `max_tokens`.

    A call without a token budget gets DEFAULT_MAX_TOKENS (sent upstream too). A reply over the cap is cut
    and logged; `truncated` says so to the caller.
    """

    def __init__(self, inner: ChatLLM) -> None:
        self.inner = inner

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        if not (options.get("max_tokens") or options.get("max_completion_tokens")):
            options["max_tokens"] = DEFAULT_MAX_TOKENS
        cap = reply_cap(options)
        result = await self.inner.chat(messages, **options)
        text, cut = cap_text(result.text, cap)
        if cut:
            log.warning(
                "utility LLM reply of %d characters cut to %d (max_tokens %s was not honoured upstream)",
                len(result.text), cap, options.get("max_tokens") or options.get("max_completion_tokens"),
            )
            result.text, result.truncated = text, True
        return result


def bounded(llm: ChatLLM) -> BoundedLLM:
    """`llm` with Rapport-side output caps (idempotent: a bounded LLM is returned as is)."""
    return llm if isinstance(llm, BoundedLLM) else BoundedLLM(llm)
