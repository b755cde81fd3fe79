"""RPM learns from the user (issue 13, point 4): chat exchanges (the model's own answers) are not history by
default, and factor association is bias-corrected and absent where responses do not repeat."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import openai

from reasoning.rpm.factors import build_factors, describe_factor, factor_stats
from reasoning.rpm.models import FactorStats, StoredFeature
from tests.support.helpers import admin, wait_until

TENANT = "tenant-a"
RPM_ONLY = ("proxy.stages.rpm_plugin:build",)
WORDS = "river lamp quiet orange spoke window gravel tender cloud marble hinge violet ladder smoke".split()


def _features(values: list[str], name: str = "topic") -> list[StoredFeature]:
    return [
        StoredFeature(id=i, entry_id=i, name=name, value=v, evidence=v, extractor="cheap")
        for i, v in enumerate(values)
    ]


def _association(values: list[str], responses: list[str]) -> float | None:
    return factor_stats(_features(values), dict(enumerate(responses)), len(values)).association


def test_free_text_responses_that_never_repeat_have_no_association() -> None:
    # The measurement: 30 free-text entries gave an uncorrected Cramér's V of exactly 1.0.
    rng = random.Random(7)
    values = [rng.choice(["horror", "comedy", "drama"]) for _ in range(30)]
    responses = [" ".join(rng.choices(WORDS, k=8)) for _ in range(30)]
    assert len(set(responses)) == 30
    assert _association(values, responses) is None


def test_association_is_bias_corrected_where_responses_repeat() -> None:
    values = ["boss"] * 5 + ["newsletter"] * 5
    # The response follows the value exactly: full association.
    assert _association(values, ["reply"] * 5 + ["archive"] * 5) == 1.0
    # The response does not depend on the value: an estimate of 0 (measured, not absent).
    assert _association(values, ["reply", "archive", "reply", "archive", "reply"] * 2) == 0.0
    # Random labels over few entries: the uncorrected V is inflated, the corrected one stays well below it.
    rng = random.Random(3)
    labels = ["a", "b", "c", "d"]
    noise = [rng.choice(labels) for _ in range(40)]
    vals = [rng.choice(["x", "y", "z"]) for _ in range(40)]
    corrected = _association(vals, noise)
    assert corrected is not None and corrected < 0.05 and _uncorrected_v(vals, noise) > 0.15
    # A 2x2 table [[3, 1], [1, 3]] worked by hand (Bergsma 2013): phi² = 0.25 becomes 0.25 - 1/7, both
    # dimensions 2 - 1/7, so V = sqrt((0.25 - 1/7) / (1 - 1/7)) = 0.3536, where the plain V says 0.5.
    values = ["a"] * 4 + ["b"] * 4
    answers = ["yes", "yes", "yes", "no", "yes", "no", "no", "no"]
    assert _association(values, answers) == 0.3536 and round(_uncorrected_v(values, answers), 4) == 0.5


def _uncorrected_v(values: list[str], responses: list[str]) -> float:
    rows, cols = sorted(set(values)), sorted(set(responses))
    table = np.zeros((len(rows), len(cols)))
    for v, r in zip(values, responses, strict=True):
        table[rows.index(v), cols.index(r)] += 1
    n = table.sum()
    expected = table.sum(axis=1, keepdims=True) @ table.sum(axis=0, keepdims=True) / n
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (n * (min(table.shape) - 1))))


def test_the_repetition_rule_on_both_sides() -> None:
    # Two responses seen twice each, two values seen twice each: just enough to estimate.
    assert _association(["a", "a", "b", "b"], ["yes", "yes", "no", "no"]) == 1.0
    # Only one response repeats (the rest are singletons): absent, however the values fall.
    assert _association(["a", "a", "b", "b", "b"], ["yes", "yes", "no", "maybe", "never"]) is None
    # Two responses repeat but only one value does: absent as well.
    assert _association(["a", "a", "b", "c"], ["yes", "yes", "no", "no"]) is None
    # Repetition counts entries: four entries with two values each repeat no response, though every
    # response fills two cells of the table.
    features = [
        StoredFeature(id=2 * e + j, entry_id=e, name="topic", value=v, evidence=v, extractor="cheap")
        for e in range(4)
        for j, v in enumerate(["x", "y"] if e < 2 else ["x", "z"])
    ]
    responses = {e: f"answer {'abcd'[e]}" for e in range(4)}
    assert factor_stats(features, responses, 4).association is None


def test_absent_association_is_not_shown_and_sorts_as_no_influence() -> None:
    stats = FactorStats(entries=3, frequency=1.0, association=None)
    assert "influence" not in describe_factor("genre", stats)
    assert "influence on responses 0.50" in describe_factor("genre", stats.model_copy(update={"association": 0.5}))
    # One factor whose responses follow its values, one over free-text responses (absent): influence first.
    features = _features(["boss", "boss", "news", "news"], "sender") + [
        StoredFeature(id=10 + i, entry_id=i, name="mood", value=v, evidence=v, extractor="cheap")
        for i, v in enumerate(["calm", "calm", "calm", "calm"])
    ]
    vecs = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4, dtype=np.float32)
    rows = build_factors(features, vecs, {0: "reply", 1: "reply", 2: "archive", 3: "archive"}, threshold=0.5)
    assert [(r[0], r[2].association) for r in rows] == [("sender", 1.0), ("mood", None)]


def _drain(h: Any) -> None:
    """Wait for every exchange's after-work (where learning would happen) to finish."""
    asyncio.run_coroutine_threadsafe(h.services.background.drain(), h.server.loop).result(30)


HISTORY = [
    {"input": f"Rate: place {i}, a {cuisine} restaurant.", "response": " ".join(random.Random(i).choices(WORDS, k=6))}
    for i, cuisine in enumerate(["seafood", "vegan", "seafood", "vegan", "thai", "thai"])
]


def test_chat_answers_are_not_learnt_by_default_and_imports_are(make_rapport: Any, scripted_upstream: Any) -> None:
    h = make_rapport(plugins=RPM_ONLY, rpm={"construction_mode": "cheap"})
    assert h.settings.rpm.learn_from_model_answers is False
    with admin(h) as a:
        r = a.post(f"/admin/users/alice/history?tenant={TENANT}", json={"items": HISTORY})
        assert r.status_code == 201, r.text
        wait_until(lambda: a.get(f"/admin/users/alice/rpm?tenant={TENANT}").json()["entries"] == {"done": 6})
        factors = a.get(f"/admin/users/alice/rpm/factors?tenant={TENANT}").json()["data"]
    # Free-text responses never repeat: the admin API says so with null, not with "1.00".
    assert factors and all(f["stats"]["association"] is None for f in factors)

    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    result = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Rate: place 9, a seafood restaurant."}],
        user="alice", extra_body={"rapport": {"rpm": {"mode": "cheap"}}},
    )
    stage = next(s for s in (result.model_extra or {})["rapport"]["stages"] if s["name"] == "rpm")
    assert stage["detail"]["conditioned"]
    system = scripted_upstream.requests[-1].json["messages"][0]["content"]
    assert "influence on responses" not in system
    _drain(h)
    with admin(h) as a:
        entries = a.get(f"/admin/users/alice/rpm/history?tenant={TENANT}").json()["data"]
    # The model's answer ("echo: ...") did not become this user's history.
    assert len(entries) == 6 and {e["source"] for e in entries} == {"import"}
    assert not any(e["response"].startswith("echo:") for e in entries)


def test_learning_from_model_answers_is_an_explicit_opt_in(make_rapport: Any, scripted_upstream: Any) -> None:
    h = make_rapport(plugins=RPM_ONLY, rpm={"construction_mode": "cheap", "learn_from_model_answers": True})
    client = openai.OpenAI(base_url=h.base_url, api_key=h.api_key)
    client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "Rate: Dock 9, seafood."}], user="bob",
        extra_body={"rapport": {"rpm": {"mode": "cheap"}}},
    )
    _drain(h)
    with admin(h) as a:
        entries = a.get(f"/admin/users/bob/rpm/history?tenant={TENANT}").json()["data"]
    assert [(e["source"], e["response"]) for e in entries] == [("exchange", "echo: Rate: Dock 9, seafood.")]
