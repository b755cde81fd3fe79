"""Event-loop lag: how late the loop wakes a task that asked to sleep a fixed interval.

Everything on the request path shares one event loop, so a blocking call anywhere (a synchronous store
call, a long CPU-bound step) delays every open request and, past uvicorn's keep-alive timeout, can make the
server close connections that clients are about to reuse. The lag histogram in /metrics makes such stalls
visible instead of leaving them to be guessed from tail latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import Gauge, Histogram

from proxy.metrics import Metrics

_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LoopLagMonitor:
    def __init__(self, metrics: Metrics, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.lag = Histogram(
            "rapport_event_loop_lag_seconds",
            "How late the event loop woke a task sleeping a fixed interval",
            buckets=_LAG_BUCKETS,
            registry=metrics.registry,
        )
        self.max_lag = Gauge(
            "rapport_event_loop_lag_max_seconds", "Largest event-loop lag since start", registry=metrics.registry
        )
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rapport-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.perf_counter() - asked - self.interval_s)
            self.lag.observe(lag)
            if lag > self.worst:
                self.worst = lag
                self.max_lag.set(lag)
