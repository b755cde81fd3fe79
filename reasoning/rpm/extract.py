"""Stage 1a: feature extraction. The LLM extractor is the paper's; the keyphrase extractor is the cheap
mode and the fallback (no LLM call: explicit `attribute: value` pairs, then keyphrases ranked over embeddings)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from memory.embedding import Embedder
from memory.llm import ChatLLM
from reasoning.rpm.models import Extraction, Feature
from reasoning.rpm.parsing import MalformedOutput, parse_model
from reasoning.rpm.prompts import PromptLibrary

log = logging.getLogger("rapport.rpm.extract")

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'$%.-]*")
_PAIR = re.compile(r"(?P<name>[A-Za-z][A-Za-z ]{0,30}?)\s*[:=]\s*(?P<value>(?:[^,;\n|.!?]|\.(?=\d)){1,60})")
_SEGMENT = re.compile(r"[,;:|.!?()\[\]\"\n]+")
_STOP = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been being it its this that
    these those i you he she we they me my your our their his her them us do does did have has had not no so than
    too very can could would should will shall may might must just about into over under again more most some any
    all each few other such only own same then there here when where why how what which who whom please rate give
    tell answer one out up down off also like new""".split()
)


@dataclass(slots=True)
class ExtractionResult:
    features: list[Feature]
    extractor: Literal["llm", "cheap"]
    ok: bool = True
    reason: str | None = None  # why an LLM extraction was skipped
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def _tokens(text: str) -> set[str]:
    return {w.lower().strip(".-'") for w in _WORD.findall(text)} - _STOP


def grounded(feature: Feature, source: str) -> bool:
    """A feature counts only if its value or evidence shows up in the input (no invented records)."""
    haystack = source.lower()
    if feature.value.lower() in haystack or (feature.evidence and feature.evidence.lower() in haystack):
        return True
    words = _tokens(feature.value) or _tokens(feature.evidence)
    if not words:
        return False
    present = _tokens(source)
    return len(words & present) / len(words) >= 0.5


class LLMFeatureExtractor:
    """Asks the utility LLM for structured features; malformed output is retried, then skipped."""

    def __init__(
        self,
        llm: ChatLLM,
        prompts: PromptLibrary,
        *,
        max_features: int = 6,
        retries: int = 1,
        max_tokens: int = 256,
        require_grounding: bool = True,
    ) -> None:
        self.llm = llm
        self.prompts = prompts
        self.max_features = max_features
        self.retries = retries
        self.max_tokens = max_tokens
        self.require_grounding = require_grounding

    def _validate(self, text: str, source: str) -> list[Feature]:
        raw = parse_model(text, Extraction, list_key="features")
        kept: list[Feature] = []
        dropped: list[str] = []
        for item in raw.features:
            try:
                feature = Feature.model_validate(item)
            except ValidationError as exc:
                dropped.append(f"invalid item ({exc.errors()[0]['msg']})")
                continue
            if self.require_grounding and not grounded(feature, source):
                dropped.append(f"ungrounded {feature.name}={feature.value!r}")
                continue
            if all((f.name, f.value.lower()) != (feature.name, feature.value.lower()) for f in kept):
                kept.append(feature)
        if not kept:
            raise MalformedOutput("no usable feature: " + ("; ".join(dropped[:4]) or "empty list"))
        return kept[: self.max_features]

    async def extract(self, text: str) -> ExtractionResult:
        prompt = self.prompts.render("extract", input=text, max_features=self.max_features)
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        result = ExtractionResult(features=[], extractor="llm", ok=False)
        for attempt in range(self.retries + 1):
            result.attempts = attempt + 1
            # A retry samples (temperature > 0): greedy decoding would repeat the same mistake.
            temperature = 0.0 if attempt == 0 else 0.5
            reply = await self.llm.chat(messages, temperature=temperature, max_tokens=self.max_tokens)
            result.prompt_tokens += reply.prompt_tokens
            result.completion_tokens += reply.completion_tokens
            try:
                result.features = self._validate(reply.text, text)
            except MalformedOutput as exc:
                result.reason = str(exc)
                result.notes.append(f"attempt {attempt + 1}: {exc}")
                # The retry shows the model its own reply and what was wrong with it.
                messages = [
                    *messages[:1],
                    {"role": "assistant", "content": reply.text[:2000]},
                    {
                        "role": "user",
                        "content": f"That reply was not usable ({exc}). Reply again with JSON only: "
                        '{"features": [{"name": "...", "value": "...", "evidence": "..."}]} '
                        "using words that appear in the input.",
                    },
                ]
                continue
            result.ok, result.reason = True, None
            return result
        log.warning("feature extraction skipped after %d attempts: %s", result.attempts, result.reason)
        return result


class KeyphraseExtractor:
    """No-LLM features: explicit attribute pairs, then keyphrases ranked by similarity to the whole input
    (with a diversity penalty), all computed with the shared embedding model."""

    def __init__(self, embedder: Embedder, *, keyphrases: int = 4, max_features: int = 6) -> None:
        self.embedder = embedder
        self.keyphrases = keyphrases
        self.max_features = max_features

    @staticmethod
    def pairs(text: str) -> list[Feature]:
        out: list[Feature] = []
        for match in _PAIR.finditer(text):
            name = match.group("name").strip()
            # A name is a short attribute label, not the tail of a sentence.
            words = name.split()
            if len(words) > 3:
                name = " ".join(words[-2:])
            value = match.group("value").strip(" .")
            if not value or not name or name.lower() in _STOP:
                continue
            try:
                out.append(Feature(name=name, value=value, evidence=match.group(0).strip()))
            except ValidationError:
                continue
        return out

    @staticmethod
    def candidates(text: str) -> list[str]:
        seen: dict[str, None] = {}
        # n-grams never cross punctuation: "cheap. A haunted" is not a phrase.
        for segment in _SEGMENT.split(text):
            words = [w.strip(".'-") for w in _WORD.findall(segment)]
            for n in (1, 2, 3):
                for i in range(len(words) - n + 1):
                    gram = words[i : i + n]
                    if gram[0].lower() in _STOP or gram[-1].lower() in _STOP or any(not g for g in gram):
                        continue
                    # "1 to 5", "movie from 1": numbers at a phrase's edge are scale boilerplate, not topics.
                    if gram[0].isdigit() or gram[-1].isdigit():
                        continue
                    if n == 1 and (len(gram[0]) < 3 or gram[0].isdigit()):
                        continue
                    seen.setdefault(" ".join(gram).lower(), None)
        return list(seen)[:200]

    async def extract(self, text: str) -> ExtractionResult:
        features = self.pairs(text)
        rest = _PAIR.sub(" | ", text)
        remaining = self.max_features - len(features)
        cands = self.candidates(rest)
        if remaining > 0 and cands:
            vectors = await self.embedder.embed([text, *cands])
            doc, cand = vectors[0], vectors[1:]
            relevance = cand @ doc
            chosen: list[int] = []
            # Maximal marginal relevance: relevant to the input, not redundant with what was already chosen.
            while len(chosen) < min(self.keyphrases, remaining, len(cands)):
                if chosen:
                    redundancy = np.max(cand @ cand[chosen].T, axis=1)
                else:
                    redundancy = np.zeros(len(cands), dtype=np.float32)
                score = 0.7 * relevance - 0.3 * redundancy
                score[chosen] = -np.inf
                chosen.append(int(np.argmax(score)))
            for i in chosen:
                features.append(Feature(name="topic", value=cands[i], evidence=cands[i]))
        return ExtractionResult(features=features[: self.max_features], extractor="cheap", ok=bool(features))
