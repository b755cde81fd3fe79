"""The limiter Rapport uses: per-key token bucket and concurrent-stream cap (LLM10: unbounded consumption).

Without `limits.redis_url` limits are per replica (the in-process LocalLimiter): N replicas let a key through N
times the configured rate. With it, the limits are shared through Redis (RedisLimiter) and a call that
Redis cannot answer in time falls back to the in-process limiter for that call: the request is served, limited per
replica, says so in x-rapport-degraded and counts in rapport_limiter_degraded_total. After a failure Redis is left
alone for `redis_retry_s`, then tried again, so limits are shared again without a restart once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from proxy.metrics import Metrics
from proxy.ratelimit.header import DEGRADED, note_degraded
from proxy.ratelimit.local import LocalLimiter
from proxy.ratelimit.shared import RedisLimiter, SharedLimiterDown
from proxy.settings import LimitSettings

log = logging.getLogger("rapport.limits")
_HEARTBEAT = "rapport-limiter-heartbeat"


@dataclass(eq=False)
class StreamSlot:
    """One open stream's slot; give it back with `RateLimiter.close_stream` (once is enough, twice is harmless).

    A slot that is dropped without being closed (a response never started) is given back all the same: the
    local count by a finalizer, the shared slot by its heartbeat stopping, so it expires within the TTL."""

    key_id: str
    # The slot's id in Redis; None when this replica counts it (no shared limiter, or it was down).
    shared_id: str | None = None
    closed: bool = False
    _release_local: weakref.finalize | None = field(default=None, repr=False)
    _heartbeat: asyncio.Task[None] | None = field(default=None, repr=False)


class RateLimiter:
    def __init__(self, limits: LimitSettings, metrics: Metrics | None = None) -> None:
        self._limits = limits
        self._metrics = metrics
        self._local = LocalLimiter()
        url = limits.redis_url.get_secret_value() if limits.redis_url is not None else None
        self._shared = RedisLimiter(url, limits.redis_timeout_s) if url else None
        self._down_until = 0.0  # monotonic time before which Redis is not tried again
        self._down = False
        self._tasks: set[asyncio.Task[None]] = set()  # heartbeats and releases under way
        self._shared_held: dict[str, str] = {}  # shared slot id -> key id, for the slots this replica holds

    async def check(self, key_id: str, rps: float | None = None) -> None:
        """Take one token from the key's bucket or raise 429 with Retry-After."""
        rate = self._limits.rate_limit_rps if rps is None else rps
        if rate <= 0:
            return
        burst = self._limits.rate_limit_burst
        if self._shared is not None:
            if self._usable():
                try:
                    await self._shared.take(key_id, rate, burst)
                    self._up()
                    return
                except SharedLimiterDown as exc:
                    self._failed("check", exc)
            self._degraded("check")
        self._local.take(key_id, rate, burst)

    async def open_stream(self, key_id: str) -> StreamSlot:
        """Hold one of the key's concurrent-stream slots or raise 429. A shared slot is renewed by a heartbeat
        while the stream runs, so one whose replica dies is freed within `stream_slot_ttl_s`."""
        cap = self._limits.max_concurrent_streams
        if cap and self._shared is not None:
            if self._usable():
                try:
                    shared_id = await self._shared.open_slot(key_id, cap, self._limits.stream_slot_ttl_s)
                    self._up()
                    return self._hold_shared(key_id, shared_id)
                except SharedLimiterDown as exc:
                    self._failed("open_stream", exc)
            self._degraded("open_stream")
        self._local.open_stream(key_id, cap)
        slot = StreamSlot(key_id=key_id)
        slot._release_local = weakref.finalize(slot, self._local.close_stream, key_id)
        return slot

    async def close_stream(self, slot: StreamSlot) -> None:
        """Give the slot back: at once here, and in Redis as soon as it answers (else its TTL frees it).
        Never suspends, so it is safe in the `finally` of a cancelled stream."""
        if slot.closed:
            return
        slot.closed = True
        if slot._release_local is not None:
            slot._release_local()
        if slot._heartbeat is not None:
            slot._heartbeat.cancel()
        if slot.shared_id is None or self._shared is None:
            return
        self._shared_held.pop(slot.shared_id, None)
        # Not awaited: this never suspends, so a cancelled caller cannot be interrupted here (and skip closing
        # its upstream stream after it); the release goes out on its own task.
        self._spawn(_release(self._shared, slot.key_id, slot.shared_id))

    def held_streams(self) -> int:
        """Streams this replica holds a slot for (counted here or in Redis)."""
        return self._local.held() + len(self._shared_held)

    async def close(self) -> None:
        """At shutdown: stop the heartbeats and give the shared slots still held back at once."""
        for task in list(self._tasks):
            if task.get_name() == _HEARTBEAT:
                task.cancel()
        if self._shared is not None:
            for shared_id, key_id in self._shared_held.items():
                self._spawn(_release(self._shared, key_id, shared_id))
            self._shared_held.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        if self._shared is not None:
            await self._shared.close()

    # -- internals --------------------------------------------------------------------------------------------

    def _hold_shared(self, key_id: str, shared_id: str) -> StreamSlot:
        assert self._shared is not None
        slot = StreamSlot(key_id=key_id, shared_id=shared_id)
        self._shared_held[shared_id] = key_id
        # The heartbeat sees the slot only through a weak reference: a slot dropped unclosed stops it.
        slot._heartbeat = self._spawn(
            _heartbeat(self._shared, key_id, shared_id, self._limits.stream_slot_ttl_s, weakref.ref(slot), self._shared_held),
            _HEARTBEAT,
        )
        return slot

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str = "rapport-limiter-release") -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _up(self) -> None:
        if self._down:
            self._down = False
            log.warning("shared limiter (Redis) answers again: limits are shared across replicas again")

    def _failed(self, op: str, exc: SharedLimiterDown) -> None:
        self._down_until = time.monotonic() + self._limits.redis_retry_s
        if not self._down:
            self._down = True
            log.warning(
                "shared limiter (Redis) failed on %s (%s): limiting per replica, retrying in %gs",
                op,
                exc,
                self._limits.redis_retry_s,
            )

    def _degraded(self, op: str) -> None:
        """This call is limited per replica: the response says so (a 429 too) and the metric counts it."""
        note_degraded(DEGRADED)
        if self._metrics is not None:
            self._metrics.limiter_degraded.labels(op).inc()


async def _heartbeat(
    shared: RedisLimiter,
    key_id: str,
    shared_id: str,
    ttl_s: float,
    owner: weakref.ref[StreamSlot],
    held: dict[str, str],
) -> None:
    # Renew three times per TTL: one late or failed renewal does not lose the slot.
    interval = ttl_s / 3
    while True:
        await asyncio.sleep(interval)  # a period, not a synchronization
        slot = owner()
        if slot is None or slot.closed:
            # Dropped without close_stream (the response never started): let it go now.
            held.pop(shared_id, None)
            await _release(shared, key_id, shared_id)
            return
        del slot
        try:
            await shared.renew(key_id, shared_id, ttl_s)
        except SharedLimiterDown as exc:
            log.debug("renewing stream slot failed (%s); retrying in %gs", exc, interval)


async def _release(shared: RedisLimiter, key_id: str, shared_id: str) -> None:
    try:
        await shared.release(key_id, shared_id)
    except SharedLimiterDown as exc:
        # Not fatal: the slot expires within its TTL since nobody renews it.
        log.debug("releasing stream slot failed (%s); it expires within its TTL", exc)
