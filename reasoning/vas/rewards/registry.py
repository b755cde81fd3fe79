"""Reward lookup by name: the shipped rewards plus the `rapport.rewards` entry-point group."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from reasoning.vas.rewards.base import Reward
from reasoning.vas.rewards.lexical import (
    ConcisenessReward,
    FormalityReward,
    ReadabilityReward,
    SentimentReward,
)

ENTRY_POINT_GROUP = "rapport.rewards"

_SHIPPED: dict[str, Callable[..., Reward]] = {
    "conciseness": ConcisenessReward,
    "readability": ReadabilityReward,
    "sentiment": SentimentReward,
    "formality": FormalityReward,
}


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_rewards() -> list[str]:
    return sorted({*_SHIPPED, *_entry_points()})


def load_reward(name: str, **options: Any) -> Reward:
    """Build a reward by name; options go to its constructor (e.g. target_words for conciseness)."""
    if name in _SHIPPED:
        return _SHIPPED[name](**options)
    eps = _entry_points()
    if name in eps:
        factory = eps[name].load()
        reward = factory(**options)
        if not isinstance(reward, Reward):
            raise TypeError(f"entry point {name!r} did not return a Reward")
        return reward
    raise KeyError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}")
