"""Per-key token buckets and concurrent-stream counters (LLM10: unbounded consumption)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from proxy.errors import RateLimited
from proxy.settings import LimitSettings


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, limits: LimitSettings) -> None:
        self._limits = limits
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}

    def check(self, key_id: str, rps: float | None = None) -> None:
        """Take one token from the key's bucket or raise 429 with Retry-After."""
        rate = self._limits.rate_limit_rps if rps is None else rps
        if rate <= 0:
            return
        burst = float(self._limits.rate_limit_burst)
        now = time.monotonic()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / rate)
            raise RateLimited(
                f"Rate limit exceeded for this key ({rate:g} requests/s). Retry after {wait}s.",
                headers={"Retry-After": str(max(1, wait))},
            )
        bucket.tokens -= 1.0

    def open_stream(self, key_id: str) -> None:
        cap = self._limits.max_concurrent_streams
        current = self._streams.get(key_id, 0)
        if cap and current >= cap:
            raise RateLimited(
                f"Too many concurrent streams for this key (limit {cap}).",
                code="concurrent_streams_exceeded",
                headers={"Retry-After": "1"},
            )
        self._streams[key_id] = current + 1

    def close_stream(self, key_id: str) -> None:
        left = self._streams.get(key_id, 0) - 1
        if left > 0:
            self._streams[key_id] = left
        else:
            self._streams.pop(key_id, None)
