"""The reward interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable


@runtime_checkable
class Reward(Protocol):
    name: str

    def score(self, prompt: str, response: str) -> float: ...


class RewardFn:
    """Adapts a plain function into a `Reward` (handy for entry points and tests)."""

    def __init__(self, name: str, fn: Callable[[str, str], float]) -> None:
        self.name = name
        self._fn = fn

    def score(self, prompt: str, response: str) -> float:
        return float(self._fn(prompt, response))
