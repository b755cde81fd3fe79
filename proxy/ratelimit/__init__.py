"""Per-key rate limits and concurrent-stream caps: in-process (per replica) by default, shared through Redis
when `limits.redis_url` is set (see limiter.py)."""

from proxy.ratelimit.header import DEGRADED, DegradedLimitsHeader
from proxy.ratelimit.limiter import RateLimiter, StreamSlot

__all__ = ["DEGRADED", "DegradedLimitsHeader", "RateLimiter", "StreamSlot"]
