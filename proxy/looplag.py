"""Event-loop lag: how late the loop wakes a task that asked to sleep a fixed interval.

Everything on the request path shares one event loop, so a blocking call anywhere (a synchronous store
call, a long CPU-bound step) delays every open request and, past uvicorn's keep-alive timeout, can make the
server close connections that clients are about to reuse. The lag histogram in /metrics makes such stalls
visible instead of leaving them to be guessed from tail latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback

from prometheus_client import Gauge, Histogram

from proxy.metrics import Metrics

_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
log = logging.getLogger("rapport.loop")


class LoopLagMonitor:
    def __init__(self, metrics: Metrics, interval_s: float = 0.1, stall_log_s: float = 0.0) -> None:
        self.interval_s = interval_s
        # A histogram says that the loop stalled, not what stalled it: past this many seconds a watchdog
        # thread logs the loop thread's stack while it is still blocked (0: off).
        self.stall_log_s = stall_log_s
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
        self._heartbeat = time.perf_counter()
        self._loop_thread = 0
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self) -> None:
        self._heartbeat = time.perf_counter()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rapport-loop-lag")
        if self.stall_log_s > 0:
            self._stop.clear()
            self._watchdog = threading.Thread(target=self._watch, name="rapport-loop-watchdog", daemon=True)
            self._watchdog.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
            self._watchdog = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self._heartbeat = time.perf_counter()
            lag = max(0.0, self._heartbeat - asked - self.interval_s)
            self.lag.observe(lag)
            if lag > self.worst:
                self.worst = lag
                self.max_lag.set(lag)

    def _watch(self) -> None:
        reported = 0.0
        while not self._stop.wait(self.interval_s / 2):
            beat = self._heartbeat
            late = time.perf_counter() - beat - self.interval_s
            if late < self.stall_log_s or beat == reported:
                continue
            reported = beat  # once per stall
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)\n"
            log.warning("event loop blocked for %.2f s so far; the loop thread is at:\n%s", late, stack)
