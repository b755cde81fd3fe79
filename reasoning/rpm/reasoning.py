"""Stage 2: a reasoning path per history entry, from its features through the user's factors to the
response the user actually gave. A reply that never validates falls back to a template path built only
from stored data (marked `template`), so no entry is left without a path and nothing is invented."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from memory.llm import ChatLLM
from reasoning.rpm.factors import describe_factor, value_note
from reasoning.rpm.models import FactorStats, ReasoningOutput, StoredFeature
from reasoning.rpm.parsing import MalformedOutput, parse_model
from reasoning.rpm.prompts import PromptLibrary

log = logging.getLogger("rapport.rpm.reasoning")


@dataclass(slots=True)
class PathResult:
    text: str
    source: Literal["llm", "template"]
    reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def features_block(features: list[StoredFeature]) -> str:
    if not features:
        return "- (none found)"
    return "\n".join(f"- {f.name}: {f.value}" for f in features)


FactorMap = dict[int, tuple[str, FactorStats]]


def template_path(features: list[StoredFeature], factors: FactorMap, response: str) -> str:
    """A short path from stored data only: each feature, what this user does for that value, the response."""
    parts = []
    for f in features:
        note = value_note(factors[f.factor_id][1], f.value) if f.factor_id in factors else None
        parts.append(f"{f.name} is {f.value}" + (f" ({note})" if note else ""))
    text = "; ".join(parts) if parts else "no distinctive features"
    return f"{text}. So this user responded: {' '.join(response.split())[:200]}"


class ReasoningWriter:
    def __init__(self, llm: ChatLLM, prompts: PromptLibrary, *, retries: int = 1, max_tokens: int = 200) -> None:
        self.llm = llm
        self.prompts = prompts
        self.retries = retries
        self.max_tokens = max_tokens

    @staticmethod
    def _parse(text: str) -> str:
        try:
            return parse_model(text, ReasoningOutput).reasoning
        except MalformedOutput:
            # Plain prose is an acceptable answer to "write the reasoning"; it still has to validate.
            if "{" in text:
                raise
            return ReasoningOutput.model_validate({"reasoning": text}).reasoning

    async def write(
        self,
        entry_input: str,
        response: str,
        features: list[StoredFeature],
        factors: FactorMap,
    ) -> PathResult:
        related = [describe_factor(*factors[f.factor_id]) for f in features if f.factor_id in factors]
        prompt = self.prompts.render(
            "reasoning",
            input=entry_input[:2000],
            features=features_block(features),
            factors="\n".join(dict.fromkeys(related)) or "- (no recurring factors yet)",
            response=response[:1000],
        )
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        result = PathResult(text="", source="template")
        for attempt in range(self.retries + 1):
            # A retry samples (temperature > 0): greedy decoding would repeat the same mistake.
            temperature = 0.0 if attempt == 0 else 0.5
            reply = await self.llm.chat(messages, temperature=temperature, max_tokens=self.max_tokens)
            result.prompt_tokens += reply.prompt_tokens
            result.completion_tokens += reply.completion_tokens
            try:
                result.text, result.source, result.reason = self._parse(reply.text), "llm", None
                return result
            except (MalformedOutput, ValueError) as exc:
                result.reason = str(exc)[:300]
                log.info("reasoning path attempt %d unusable: %s", attempt + 1, result.reason)
                messages = [
                    messages[0],
                    {"role": "assistant", "content": reply.text[:2000]},
                    {"role": "user", "content": 'Reply again with JSON only: {"reasoning": "..."}'},
                ]
        log.warning("reasoning path fell back to the template: %s", result.reason)
        result.text = template_path(features, factors, response)
        return result
