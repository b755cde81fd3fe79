"""A reward from an LLM judge (the utility model): it rates the answer 1-10 for a stated criterion."""

from __future__ import annotations

import asyncio
import re

from memory.llm import ChatLLM, bounded

_NUMBER = re.compile(r"\b(10|[1-9])\b")


class LLMJudgeReward:
    """Scores in [0, 1]; unparseable judgements score 0.5 so that a weak judge adds noise, not bias."""

    name = "llm_judge"

    def __init__(self, llm: ChatLLM, criterion: str = "helpful, correct and concise") -> None:
        # Bounded: an upstream that ignores max_tokens=4 must not hand a megabyte to the score parser.
        self.llm = bounded(llm)
        self.criterion = criterion

    def _messages(self, prompt: str, response: str) -> list[dict[str, str]]:
        return [
            {
                "role": "user",
                "content": (
                    f"Rate how {self.criterion} this answer is, from 1 (worst) to 10 (best). "
                    f"Reply with the number only.\n\nQuestion: {prompt}\n\nAnswer: {response}"
                ),
            }
        ]

    async def ascore(self, prompt: str, response: str) -> float:
        result = await self.llm.chat(self._messages(prompt, response), max_tokens=4, temperature=0.0)
        match = _NUMBER.search(result.text)
        return (int(match.group(1)) - 1) / 9.0 if match else 0.5

    def score(self, prompt: str, response: str) -> float:
        # Synchronous callers (training runs off the event loop) get their own loop.
        return asyncio.run(self.ascore(prompt, response))
