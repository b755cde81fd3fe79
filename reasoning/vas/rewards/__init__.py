"""Rewards that score an answer: what value models learn to predict and what benches measure.

A reward maps (prompt, response) to a float, higher is better. The shipped ones run offline; custom ones
register under the `rapport.rewards` entry-point group as a zero-argument factory returning a `Reward`.
"""

from __future__ import annotations

from reasoning.vas.rewards.base import Reward, RewardFn
from reasoning.vas.rewards.judge import LLMJudgeReward
from reasoning.vas.rewards.lexical import (
    ConcisenessReward,
    FormalityReward,
    ReadabilityReward,
    SentimentReward,
    count_syllables,
    grade_level,
)
from reasoning.vas.rewards.registry import available_rewards, load_reward

__all__ = [
    "ConcisenessReward",
    "FormalityReward",
    "LLMJudgeReward",
    "ReadabilityReward",
    "Reward",
    "RewardFn",
    "SentimentReward",
    "available_rewards",
    "count_syllables",
    "grade_level",
    "load_reward",
]
