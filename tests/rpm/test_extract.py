"""Stage 1a: structured extraction, its validation, retry-then-skip, and the cheap extractor."""

from __future__ import annotations

import logging

import pytest

from reasoning.rpm.extract import KeyphraseExtractor, LLMFeatureExtractor
from reasoning.rpm.models import Extraction, HistoryItem
from reasoning.rpm.parsing import MalformedOutput, parse_model
from reasoning.rpm.prompts import PromptLibrary
from tests.rpm.fakes import ScriptedLLM, features_json

MOVIE = "Rate this movie: Night Harbor, a slow horror film from 1998, runtime 140 minutes."


def test_parse_accepts_fenced_wrapped_and_bare_list() -> None:
    fenced = 'Sure!\n```json\n{"features": [{"name": "genre", "value": "horror"}]}\n```'
    assert parse_model(fenced, Extraction).features[0]["value"] == "horror"
    prose = 'Here: {"features": [{"name": "genre", "value": "horror"}]} hope it helps'
    assert parse_model(prose, Extraction).features[0]["name"] == "genre"
    bare = '[{"name": "genre", "value": "horror"}]'
    assert parse_model(bare, Extraction, list_key="features").features[0]["name"] == "genre"
    with pytest.raises(MalformedOutput, match="no JSON"):
        parse_model("genre is horror", Extraction)
    with pytest.raises(MalformedOutput, match="schema mismatch"):
        parse_model('{"features": []}', Extraction)


async def test_llm_extraction_validates_records() -> None:
    llm = ScriptedLLM().add("Night Harbor", features_json(("Genre", "horror"), ("runtime", "140 minutes")))
    ex = LLMFeatureExtractor(llm, PromptLibrary())
    result = await ex.extract(MOVIE)
    assert result.ok and result.attempts == 1
    assert [(f.name, f.value) for f in result.features] == [("genre", "horror"), ("runtime", "140 minutes")]


async def test_malformed_output_is_retried_once_then_succeeds() -> None:
    llm = ScriptedLLM().add("Night Harbor", "genre: horror (sorry, no json)", features_json(("genre", "horror")))
    result = await LLMFeatureExtractor(llm, PromptLibrary()).extract(MOVIE)
    assert result.ok and result.attempts == 2
    assert len(llm.calls) == 2
    # The retry shows the model what was wrong with its first reply.
    assert "not usable" in llm.calls[1][-1]["content"]


async def test_malformed_twice_is_skipped_with_a_logged_reason(caplog: pytest.LogCaptureFixture) -> None:
    llm = ScriptedLLM().add("Night Harbor", "{not json", '{"features": "horror"}', features_json(("genre", "horror")))
    with caplog.at_level(logging.WARNING, logger="rapport.rpm.extract"):
        result = await LLMFeatureExtractor(llm, PromptLibrary(), retries=1).extract(MOVIE)
    assert not result.ok and result.features == []
    assert result.attempts == 2 and len(llm.calls) == 2  # retried exactly once, never a third call
    assert "skipped" in caplog.text and result.reason


async def test_invented_features_are_dropped_not_kept() -> None:
    # "romance" and "Tom Hanks" appear nowhere in the input: a weak model invented them.
    reply = features_json(("genre", "romance"), ("actor", "Tom Hanks"), ("year", "1998"))
    llm = ScriptedLLM().add("Night Harbor", reply)
    result = await LLMFeatureExtractor(llm, PromptLibrary()).extract(MOVIE)
    assert [(f.name, f.value) for f in result.features] == [("year", "1998")]


async def test_all_invented_counts_as_malformed() -> None:
    llm = ScriptedLLM().add("Night Harbor", features_json(("genre", "romance")))
    result = await LLMFeatureExtractor(llm, PromptLibrary()).extract(MOVIE)
    assert not result.ok and "ungrounded" in (result.reason or "")


async def test_cheap_extractor_reads_pairs_and_keyphrases(embedder) -> None:
    cheap = KeyphraseExtractor(embedder, keyphrases=2)
    result = await cheap.extract("Genre: horror, Price: cheap. A haunted lighthouse story with ghosts at sea.")
    pairs = {(f.name, f.value) for f in result.features}
    assert ("genre", "horror") in pairs and ("price", "cheap") in pairs
    topics = [f.value for f in result.features if f.name == "topic"]
    assert len(topics) == 2
    assert any(word in " ".join(topics) for word in ("haunted", "lighthouse", "ghosts"))
    assert result.extractor == "cheap" and result.ok


async def test_skipped_llm_extraction_falls_back_to_cheap_in_construction(make_engine) -> None:
    llm = ScriptedLLM().add("Night Harbor", "nonsense", "still nonsense")
    engine = make_engine(llm)
    [eid] = await engine.add_history("t", "u", [HistoryItem(input=MOVIE, response="2")])
    report = await engine.build("t", "u")
    assert report.skipped == 0 and report.fallback_cheap == 1
    [entry] = engine.store.entries("t", "u", ids=[eid], details=True)
    assert entry.features and all(f.extractor == "cheap" for f in entry.features)
    assert entry.skip_reason and "llm extraction skipped" in entry.skip_reason
