"""Per-key token buckets and concurrent-stream counters in this process's memory (per replica)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from proxy.errors import RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


def rate_limited(rate: float, wait_s: float) -> RateLimited:
    wait = max(1, math.ceil(wait_s))
    return RateLimited(
        f"Rate limit exceeded for this key ({rate:g} requests/s). Retry after {wait}s.",
        headers={"Retry-After": str(wait)},
    )


def streams_exceeded(cap: int) -> RateLimited:
    return RateLimited(
        f"Too many concurrent streams for this key (limit {cap}).",
        code="concurrent_streams_exceeded",
        headers={"Retry-After": "1"},
    )


class LocalLimiter:
    """What one replica knows: with N replicas, each lets a key through at the full rate (N times in total).

    Synchronous and lock-free: it only runs on the event loop's thread."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}

    def take(self, key_id: str, rate: float, burst: int) -> None:
        """Take one token from the key's bucket or raise 429 with Retry-After."""
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(tokens=float(burst), updated=now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise rate_limited(rate, (1.0 - bucket.tokens) / rate)
        bucket.tokens -= 1.0

    def open_stream(self, key_id: str, cap: int) -> None:
        current = self._streams.get(key_id, 0)
        if cap and current >= cap:
            raise streams_exceeded(cap)
        self._streams[key_id] = current + 1

    def close_stream(self, key_id: str) -> None:
        left = self._streams.get(key_id, 0) - 1
        if left > 0:
            self._streams[key_id] = left
        else:
            self._streams.pop(key_id, None)

    def held(self) -> int:
        return sum(self._streams.values())
