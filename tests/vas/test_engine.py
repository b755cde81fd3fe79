"""Resolving a request into a VAS plan: option validation and where the weights come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from reasoning.vas.config import VASSettings
from reasoning.vas.decoding import centre, sample_index
from reasoning.vas.engine import VASEngine, VASOptionError, parse_request


@pytest.fixture()
def engine(tmp_path: Path) -> VASEngine:
    settings = VASSettings(
        value_models=[{"name": "concise", "path": str(tmp_path / "a")}, {"name": "warm", "path": str(tmp_path / "b")}],
        beta=1.5,
        max_tokens=100,
    )
    eng = VASEngine(settings, tmp_path)
    eng.backends = {"concise": object(), "warm": object()}  # type: ignore[dict-item]  # plan() only reads names
    return eng


def test_weights_precedence_request_profile_settings_all(engine: VASEngine) -> None:
    body = {"max_tokens": 500, "temperature": 0.7}
    plan = engine.plan(parse_request(True), "t", "u", body)
    assert plan.weights_from == "all" and plan.weights == {"concise": 1.0, "warm": 1.0}
    assert plan.params.beta == 1.5 and plan.params.max_tokens == 100 and plan.params.temperature == 0.7
    engine.settings.default_weights = {"warm": 2.0}
    assert engine.plan(parse_request(True), "t", "u", {}).weights_from == "settings"
    engine.store.put("t", "u", {"concise": 0.5, "warm": 0.0}, beta=4.0)
    plan = engine.plan(parse_request(True), "t", "u", {})
    assert plan.weights == {"concise": 0.5} and plan.weights_from == "profile" and plan.params.beta == 4.0
    # Another tenant's user of the same name does not see that profile.
    assert engine.plan(parse_request(True), "t2", "u", {}).weights_from == "settings"
    plan = engine.plan(parse_request({"weights": {"warm": 1.0}, "beta": 0.5}), "t", "u", {})
    assert plan.weights == {"warm": 1.0} and plan.weights_from == "request" and plan.params.beta == 0.5


@pytest.mark.parametrize(
    ("raw", "param"),
    [({"beta": -0.1}, "rapport.vas.beta"), ({"mode": "beam"}, "rapport.vas.mode"), ({"x": 1}, "rapport.vas.x")],
)
def test_bad_options_name_their_param(raw: dict[str, object], param: str) -> None:
    with pytest.raises(VASOptionError) as err:
        parse_request(raw)
    assert err.value.param == param


def test_unknown_value_model_is_rejected(engine: VASEngine) -> None:
    with pytest.raises(VASOptionError) as err:
        engine.plan(parse_request({"weights": {"nope": 1.0}}), "t", "u", {})
    assert err.value.param == "rapport.vas.weights"


def test_sampling_follows_softmax_and_top_p() -> None:
    import random

    rng = random.Random(0)
    scores = [0.0, -0.6931471805599453]  # probabilities 2/3 and 1/3
    picks = [sample_index(scores, 1.0, 1.0, rng) for _ in range(6000)]
    assert abs(picks.count(0) / 6000 - 2 / 3) < 0.03
    assert {sample_index(scores, 1.0, 0.5, rng) for _ in range(200)} == {0}  # nucleus keeps the top token
    assert centre([1.0, 2.0, 3.0]) == [-1.0, 0.0, 1.0]
