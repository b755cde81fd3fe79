"""The shipped rewards rank texts the way their names promise; the registry finds them."""

from __future__ import annotations

import pytest

from reasoning.vas.rewards import (
    ConcisenessReward,
    FormalityReward,
    ReadabilityReward,
    RewardFn,
    SentimentReward,
    available_rewards,
    count_syllables,
    grade_level,
    load_reward,
)


def test_syllables_on_known_words() -> None:
    expected = {"cat": 1, "table": 2, "banana": 3, "make": 1, "wanted": 2, "jumped": 1, "university": 5}
    assert {w: count_syllables(w) for w in expected} == expected


def test_grade_level_orders_simple_below_complex() -> None:
    simple = "The cat sat on the mat. It was warm. We had fun."
    hard = "Institutional considerations necessitate comprehensive organizational restructuring immediately."
    assert grade_level(simple) < 3 < 12 < grade_level(hard)
    r = ReadabilityReward(target_grade=6)
    assert r.score("", simple) == 0.0 and r.score("", hard) < -0.5


def test_conciseness_peaks_at_target() -> None:
    r = ConcisenessReward(target_words=5)
    assert r.score("", "one two three four five") == 0.0
    assert r.score("", "one two three four five six seven") < 0
    assert r.score("", "one two three four five six seven") > r.score("", " ".join(["w"] * 20))
    with pytest.raises(ValueError):
        ConcisenessReward(0)


def test_sentiment_sign_and_negation() -> None:
    r = SentimentReward()
    assert r.score("", "What a wonderful, happy day.") > 0.5
    assert r.score("", "A terrible, sad accident.") < -0.5
    assert r.score("", "It was not bad.") > 0
    assert r.score("", "The table is brown.") == 0


def test_formality() -> None:
    r = FormalityReward()
    formal = "Therefore, we kindly request that you provide the documentation."
    informal = "hey dude, that's gonna be super cool lol!"
    assert r.score("", formal) > 0.3 > -0.3 > r.score("", informal)


def test_registry() -> None:
    assert {"conciseness", "readability", "sentiment", "formality"} <= set(available_rewards())
    assert load_reward("conciseness", target_words=7).target_words == 7  # type: ignore[attr-defined]
    with pytest.raises(KeyError):
        load_reward("no-such-reward")
    assert RewardFn("len", lambda p, r: len(r)).score("", "abc") == 3.0


class _Judge:
    """A ChatLLM that answers with fixed text: the judge's parsing is what is under test here."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.seen: list[list[dict[str, str]]] = []

    async def chat(self, messages: list[dict[str, str]], **options: object) -> object:
        from memory.llm import LLMResult

        self.seen.append(messages)
        return LLMResult(text=self.text, prompt_tokens=1, completion_tokens=1)


@pytest.mark.parametrize(("text", "expected"), [("8", 7 / 9), ("Rating: 10/10", 1.0), ("1", 0.0), ("great!", 0.5)])
async def test_llm_judge_parses_ratings(text: str, expected: float) -> None:
    from reasoning.vas.rewards import LLMJudgeReward

    judge = _Judge(text)
    reward = LLMJudgeReward(judge, criterion="polite")  # type: ignore[arg-type]
    assert await reward.ascore("Q?", "A.") == pytest.approx(expected)
    assert "polite" in judge.seen[0][0]["content"] and "A." in judge.seen[0][0]["content"]
