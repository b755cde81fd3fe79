"""Operator bounds on one VAS answer: upstream calls, value passes and a wall-clock deadline.

A steered step costs upstream calls (1 per token step, K per block step, N for Best-of-N) and value passes
(one per value model scoring the step). Decoders ask the budget before each step; once it says no (or the
deadline cuts a step short), they stop steering and finish the answer plainly: one plain completion of the
same prefix. One call stays reserved for that finish, so a request never exceeds `max_upstream_calls`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_upstream_calls: int | None = None
    max_value_passes: int | None = None
    deadline_s: float | None = None


class DeadlineReached(Exception):
    """The deadline cut a steered step short; the decoder finishes plainly."""


class Budget:
    def __init__(self, limits: Limits, calls: Callable[[], int], passes: Callable[[], int]) -> None:
        self.limits = limits
        self._calls, self._passes = calls, passes
        self._calls0, self._passes0 = calls(), passes()
        self._deadline = None if limits.deadline_s is None else time.monotonic() + limits.deadline_s
        # Why steering stopped early ("upstream_calls" | "value_passes" | "deadline" | "value_backend_down" |
        # "ambiguous_empty_token"), and the detail that goes with it; None while steering as asked.
        self.stopped: str | None = None
        self.reason: str | None = None

    def calls_used(self) -> int:
        return self._calls() - self._calls0

    def passes_used(self) -> int:
        return self._passes() - self._passes0

    def stop(self, what: str, reason: str) -> None:
        if self.stopped is None:
            self.stopped, self.reason = what, reason[:300]

    def allows(self, calls: int, passes: int, reserve: int = 1) -> bool:
        """Whether a step of `calls` upstream calls and `passes` value passes fits, keeping `reserve` calls."""
        cap = self.limits.max_upstream_calls
        if cap is not None and self.calls_used() + calls + reserve > cap:
            self.stop("upstream_calls", f"reached max_upstream_calls={cap}")
            return False
        vcap = self.limits.max_value_passes
        if vcap is not None and passes and self.passes_used() + passes > vcap:
            self.stop("value_passes", f"reached max_value_passes={vcap}")
            return False
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self.stop("deadline", f"reached deadline_s={self.limits.deadline_s}")
            return False
        return True

    async def within_deadline(self, step: Awaitable[T]) -> T:
        """Await a steered step, cut short at the deadline (DeadlineReached; the step is cancelled)."""
        if self._deadline is None:
            return await step
        task = asyncio.ensure_future(step)
        remaining = self._deadline - time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=max(0.0, remaining))
        if task in done:
            return task.result()
        task.cancel()
        # Nobody awaits the cancelled step: read its outcome so that a late failure is not logged as lost.
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
        self.stop("deadline", f"reached deadline_s={self.limits.deadline_s}")
        raise DeadlineReached()
