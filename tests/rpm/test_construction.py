"""Stages 1b and 2: factor clustering, factor statistics, reasoning path storage, incremental builds."""

from __future__ import annotations

from reasoning.rpm.models import HistoryItem
from tests.rpm.fakes import ScriptedLLM, features_json

# A user whose rating depends on the genre (horror low, comedy high); the price wording varies.
HISTORY = [
    ("Movie A: a horror film, ticket price cheap.", "1", [("genre", "horror"), ("ticket price", "cheap")]),
    ("Movie B: a comedy film, ticket price expensive.", "5", [("movie genre", "comedy"), ("cost", "expensive")]),
    ("Movie C: a horror film, ticket price expensive.", "2", [("genre", "horror"), ("price", "expensive")]),
    ("Movie D: a comedy film, ticket price cheap.", "5", [("genre", "comedy"), ("price", "cheap")]),
    ("Movie E: a comedy film, ticket price cheap.", "4", [("film genre", "comedy"), ("price", "cheap")]),
]


def scripted() -> ScriptedLLM:
    llm = ScriptedLLM()
    for text, _, feats in HISTORY:
        llm.add(text, features_json(*feats))
    llm.default = lambda prompt: (
        '{"reasoning": "The genre is what this person weighs most, so the rating follows the genre."}'
        if "reasoning this person followed" in prompt
        else "?"
    )
    return llm


async def _built(make_engine, llm: ScriptedLLM):
    engine = make_engine(llm)
    await engine.add_history("t", "u", [HistoryItem(input=t, response=r, task="rating") for t, r, _ in HISTORY])
    report = await engine.build("t", "u")
    return engine, report


async def test_features_cluster_into_factors_with_statistics(make_engine) -> None:
    engine, report = await _built(make_engine, scripted())
    assert report.extracted == 5 and report.skipped == 0
    factors = {f.name: f for f in engine.store.factors("t", "u")}
    assert set(factors) == {"genre", "price"}
    assert set(factors["genre"].members) == {"genre", "movie genre", "film genre"}
    assert set(factors["price"].members) == {"price", "ticket price", "cost"}
    genre = factors["genre"].stats
    assert genre.entries == 5 and genre.frequency == 1.0 and genre.numeric_responses
    values = {v.value: v for v in genre.values}
    assert values["comedy"].count == 3 and values["horror"].count == 2
    assert values["comedy"].response_mean == round((5 + 5 + 4) / 3, 3)
    assert values["horror"].response_mean == 1.5
    # The genre decides the rating, the price barely does: the association says so.
    price = factors["price"].stats
    assert genre.association is not None and price.association is not None
    assert genre.association > 0.8 > price.association
    # Factors most tied to the responses come first.
    assert engine.store.factors("t", "u")[0].name == "genre"
    for feature in engine.store.features("t", "u"):
        assert feature.factor_id is not None


async def test_categorical_responses_use_top_responses(make_engine) -> None:
    llm = ScriptedLLM()
    rows = [
        ("Email from my boss about the budget.", "reply now", [("sender", "boss")]),
        ("Email from my boss about travel.", "reply now", [("sender", "boss")]),
        ("Email from a newsletter about deals.", "archive", [("sender", "newsletter")]),
        ("Email from a newsletter about shoes.", "archive", [("sender", "newsletter")]),
    ]
    for text, _, feats in rows:
        llm.add(text, features_json(*feats))
    engine = make_engine(llm)
    await engine.add_history("t", "u", [HistoryItem(input=t, response=r) for t, r, _ in rows])
    await engine.build("t", "u")
    [factor] = engine.store.factors("t", "u")
    assert not factor.stats.numeric_responses
    tops = {v.value: v.top_responses[0] for v in factor.stats.values}
    assert tops == {"boss": ("reply now", 2), "newsletter": ("archive", 2)}
    assert factor.stats.association == 1.0


async def test_reasoning_paths_are_stored_with_features(make_engine) -> None:
    llm = scripted()
    engine, report = await _built(make_engine, llm)
    assert report.paths_llm == 5
    entries = engine.store.entries("t", "u", details=True)
    assert all(e.status == "done" and e.reasoning is not None for e in entries)
    assert all(e.reasoning.source == "llm" and "genre" in e.reasoning.text for e in entries if e.reasoning)
    # The path prompt saw the entry's features, its factors' statistics and the actual response.
    prompts = llm.prompts_containing("reasoning this person followed")
    assert len(prompts) == 5
    first = next(p for p in prompts if "Movie A" in p)
    assert "- genre: horror" in first and "avg response" in first and '"""\n1\n"""' in first


async def test_unusable_path_falls_back_to_a_template_built_from_data(make_engine) -> None:
    llm = scripted()
    llm.default = lambda prompt: "{broken" if "reasoning this person followed" in prompt else "?"
    engine, report = await _built(make_engine, llm)
    assert report.paths_template == 5 and report.paths_llm == 0
    entry = engine.store.entries("t", "u", details=True)[0]
    assert entry.reasoning is not None and entry.reasoning.source == "template"
    assert "genre is horror (average response 1.5 over 2)" in entry.reasoning.text
    assert entry.reasoning.text.endswith("responded: 1")


async def test_construction_is_incremental_and_reports_progress(make_engine) -> None:
    llm = scripted()
    engine, _ = await _built(make_engine, llm)
    calls = len(llm.calls)
    seen: list[tuple[int, int]] = []
    report = await engine.build("t", "u", progress=lambda d, t: seen.append((d, t)))
    assert report.extracted == 0 and len(llm.calls) == calls  # nothing new: no LLM call
    llm.add("Movie F:", features_json(("genre", "horror")))
    await engine.add_history("t", "u", [HistoryItem(input="Movie F: a horror film.", response="1")])
    report = await engine.build("t", "u", progress=lambda d, t: seen.append((d, t)))
    assert report.extracted == 1 and report.paths_llm == 1
    assert len(llm.calls) == calls + 2  # one extraction, one path
    assert seen[-1][0] == seen[-1][1]
    genre = next(f for f in engine.store.factors("t", "u") if f.name == "genre")
    assert genre.stats.entries == 6
    assert engine.store.build("t", "u")["state"] == "done"


async def test_users_are_isolated_and_forget_removes_everything(make_engine) -> None:
    engine, _ = await _built(make_engine, scripted())
    assert engine.store.factors("t", "other") == [] and engine.store.features("t2", "u") == []
    await engine.forget("t", "u")
    assert engine.store.entries("t", "u") == []
    assert engine.store.features("t", "u") == [] and engine.store.factors("t", "u") == []
    assert engine.store.paths("t", "u") == [] and engine.store.build("t", "u") is None


async def test_rebuild_recomputes_everything(make_engine) -> None:
    llm = scripted()
    engine, _ = await _built(make_engine, llm)
    calls = len(llm.calls)
    report = await engine.build("t", "u", rebuild=True)
    assert report.extracted == 5 and report.paths_llm == 5 and len(llm.calls) == calls + 10
