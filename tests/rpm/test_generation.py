"""Stage 3: feature-level retrieval (where it disagrees with text similarity), the conditioning prompt,
the latency budget's fallback, and keeping the reasoning out of the final answer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reasoning.rpm.generate import ReasoningStreamFilter, strip_reasoning
from reasoning.rpm.models import HistoryItem, RPMRequestOptions
from reasoning.rpm.retrieve import text_level
from tests.rpm.fakes import ScriptedLLM, features_json

QUERY = "Review request: the restaurant Blue Fin downtown, a seafood place, expensive."
# Nearly the query's words, but a different kind of place: text similarity picks it, features must not.
LOOKALIKE = "Review request: the restaurant Blue Fig downtown, a vegan place, cheap."
# Few shared words, same features (seafood, expensive).
MATCH = "Thoughts on that oyster bar? Seafood only and really expensive."
OTHER = "Thoughts on the noodle stall by the station? Ramen, and cheap."


def scripted() -> ScriptedLLM:
    llm = ScriptedLLM()
    llm.add("Blue Fin", features_json(("cuisine", "seafood"), ("price", "expensive")))
    llm.add("Blue Fig", features_json(("cuisine", "vegan"), ("price", "cheap")))
    llm.add("oyster bar", features_json(("cuisine", "Seafood"), ("price", "expensive")))
    llm.add("noodle stall", features_json(("cuisine", "Ramen"), ("price", "cheap")))
    llm.default = lambda prompt: '{"reasoning": "Pricey seafood is what this person loves, so they rate it high."}'
    return llm


async def _engine(make_engine, llm: ScriptedLLM, **settings: object):
    engine = make_engine(llm, **settings)
    await engine.add_history(
        "t", "u",
        [HistoryItem(input=LOOKALIKE, response="2"), HistoryItem(input=MATCH, response="5"),
         HistoryItem(input=OTHER, response="1")],
    )
    await engine.build("t", "u")
    return engine


async def test_feature_retrieval_disagrees_with_text_retrieval(make_engine, embedder) -> None:
    engine = await _engine(make_engine, scripted())
    ids = {e.input: e.id for e in engine.store.entries("t", "u")}
    # Text similarity prefers the look-alike...
    entry_ids, vecs = engine.store.input_vectors("t", "u")
    qvec = (await embedder.embed([QUERY]))[0]
    assert text_level(qvec, entry_ids, vecs, 1)[0].entry_id == ids[LOOKALIKE]
    # ...feature-level similarity finds the entry that shares what matters.
    details: dict = {}
    hits, feats = await engine.retrieve("t", "u", QUERY, engine.resolve(RPMRequestOptions(top_k=3, mode="llm")), details)
    assert details["retrieval"] == "features" and details["extractor"] == "llm"
    assert next(h.entry_id for h in hits) == ids[MATCH]
    assert hits[0].score > hits[1].score
    assert {(f.name, f.value) for f in feats} == {("cuisine", "seafood"), ("price", "expensive")}


async def test_conditioning_carries_factors_statistics_and_paths(make_engine) -> None:
    engine = await _engine(make_engine, scripted())
    cond = await engine.condition("t", "u", QUERY, RPMRequestOptions(top_k=1, mode="llm"))
    assert cond.system is not None and cond.details["used"]
    assert '- "cuisine":' in cond.system and "avg response" in cond.system
    assert MATCH in cond.system and LOOKALIKE not in cond.system
    assert "Pricey seafood is what this person loves" in cond.system
    assert "<reasoning>" in cond.system and '"cuisine" = "seafood"' in cond.system
    assert cond.details["examples"][0]["entry_id"] == next(
        e.id for e in engine.store.entries("t", "u") if e.input == MATCH
    )


async def test_over_budget_extraction_falls_back_and_says_so(make_engine) -> None:
    llm = scripted()
    engine = await _engine(make_engine, llm)
    llm.delay_s = 2.0  # the model is now slower than the budget
    cond = await engine.condition("t", "u", QUERY, RPMRequestOptions(top_k=2, mode="auto", budget_ms=50))
    assert "over the 50 ms budget" in cond.details["fallback"]
    assert cond.details["extractor"] == "cheap" and cond.system is not None


async def test_no_features_falls_back_to_query_text(make_engine) -> None:
    engine = await _engine(make_engine, scripted())
    cond = await engine.condition("t", "u", "??", RPMRequestOptions(mode="cheap"))
    assert cond.details["retrieval"] == "query_text" and "query text" in cond.details["fallback"]


async def test_cheap_mode_makes_no_llm_call(make_engine) -> None:
    llm = scripted()
    engine = await _engine(make_engine, llm)
    calls = len(llm.calls)
    cond = await engine.condition("t", "u", QUERY, RPMRequestOptions(mode="cheap"))
    assert len(llm.calls) == calls and cond.details["extractor"] == "cheap" and "fallback" not in cond.details


async def test_user_without_history_is_not_conditioned(make_engine) -> None:
    engine = make_engine(scripted())
    cond = await engine.condition("t", "nobody", QUERY)
    assert cond.system is None and cond.details["used"] is False


def test_prompt_override_dir(tmp_path, make_engine) -> None:
    (tmp_path / "generate.txt").write_text("CUSTOM $factors")
    from reasoning.rpm.prompts import PromptLibrary

    lib = PromptLibrary(tmp_path)
    assert lib.render("generate", factors="X") == "CUSTOM X"
    assert "features of it that influenced" in lib.render("extract", input="x", max_features=3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<reasoning>genre matters</reasoning>\n4", "4"),
        ("<Reasoning>a</Reasoning> The answer is 4. <reasoning>b</reasoning>", "The answer is 4."),
        ("they like horror</reasoning>Rating: 2", "Rating: 2"),
        ("Rating: 2 <reasoning>because horror", "Rating: 2"),
        ("<reasoning>horror is disliked\nRating: 2", "Rating: 2"),
        ("plain answer", "plain answer"),
    ],
)
def test_strip_reasoning(text: str, expected: str) -> None:
    assert strip_reasoning(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<reasoning>genre matters, so low</reasoning>\nRating: 4",
        "Intro. <reasoning>x < y</reasoning> Final: yes <reasoning>more</reasoning>!",
        "No tags at all < here",
        "<reasoning>never closed, last line\nAnswer 3",
    ],
)
def test_stream_filter_matches_whole_text_strip(text: str) -> None:
    rng = random.Random(7)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(6, len(text) - 1)))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        f = ReasoningStreamFilter()
        out = "".join(f.feed(c) for c in chunks) + f.flush()
        assert out.strip() == strip_reasoning(text)


def test_retrieval_scores_are_weighted_means() -> None:
    from reasoning.rpm.retrieve import feature_level

    q = np.eye(3, dtype=np.float32)[:2]
    feats = np.eye(3, dtype=np.float32)[[0, 2, 1]]
    hits = feature_level(q, np.array([3.0, 1.0], dtype=np.float32), feats, [10, 10, 11], top_k=2)
    assert [(h.entry_id, round(h.score, 3)) for h in hits] == [(10, 0.75), (11, 0.25)]


class _Broken:
    async def chat(self, messages, **options):
        raise ConnectionError("upstream down")


async def test_upstream_failure_at_request_time_falls_back(make_engine) -> None:
    engine = await _engine(make_engine, scripted())
    engine.llm_extractor.llm = _Broken()
    cond = await engine.condition("t", "u", QUERY, RPMRequestOptions(mode="llm"))
    assert "ConnectionError" in cond.details["fallback"] and cond.details["extractor"] == "cheap"
    assert cond.system is not None


async def test_failed_build_is_reported_and_resumable(make_engine) -> None:
    engine = make_engine(_Broken())
    await engine.add_history("t", "u", [HistoryItem(input=QUERY, response="5")])
    with pytest.raises(ConnectionError):
        await engine.build("t", "u")
    assert engine.store.build("t", "u")["state"] == "failed"
    engine.llm_extractor.llm = scripted()
    engine.builder.writer.llm = engine.llm_extractor.llm
    report = await engine.build("t", "u")
    assert report.extracted == 1 and engine.store.build("t", "u")["state"] == "done"
