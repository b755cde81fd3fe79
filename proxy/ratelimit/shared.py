"""Per-key limits shared by every replica, in Redis: one atomic script per decision, Redis's clock only.

Token bucket: a hash {tokens, ts} per key, refilled by the time elapsed on the Redis server's clock (TIME), so
replicas with skewed clocks agree. Stream slots: a sorted set per key of slot ids scored by their expiry (ms,
server clock); each open prunes the expired ones first, so a replica that died mid-stream (and stopped renewing)
frees its slots within the TTL. Every call is bounded by a short timeout; any Redis failure is raised as
SharedLimiterDown for the caller to fall back on.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.ratelimit.local import rate_limited, streams_exceeded

PREFIX = "rapport:limits:"
T = TypeVar("T")

# KEYS[1] bucket hash. ARGV: rate (tokens/s), burst. Returns {1 taken | 0 refused, tokens left as a string}
# (a Lua number returned to Redis is cut to an integer, hence the string).
_TAKE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = t
end
tokens = math.min(burst, tokens + math.max(0, t - ts) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(t))
-- A bucket left alone this long is full again: dropping it changes nothing.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, tostring(tokens)}
"""

# KEYS[1] slot set. ARGV: cap, slot id, ttl (ms). Returns 1 (slot held) or 0 (cap reached).
_OPEN = """
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
local cap = tonumber(ARGV[1])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], t + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return 1
"""

# KEYS[1] slot set. ARGV: slot id, ttl (ms). The slot's expiry moves to now + ttl. A slot pruned meanwhile (its
# renewals were late) is taken back: the stream is still running, so it still counts.
_RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], t + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return 1
"""


class SharedLimiterDown(Exception):
    """Redis did not answer in time (or at all); the message names the error, never the URL."""


class RedisLimiter:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        # No retries and short socket timeouts: a request waits at most about timeout_s for Redis, then the
        # caller falls back. The pool reconnects on the next call, so Redis coming back needs no restart.
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        # EVALSHA, falling back to EVAL when the server does not know the script (e.g. after a Redis restart).
        self._take = self._client.register_script(_TAKE)
        self._open = self._client.register_script(_OPEN)
        self._renew = self._client.register_script(_RENEW)

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            # The socket timeouts bound each read and connect; this bounds the whole call (a connect then a
            # slow reply, EVALSHA then EVAL).
            async with asyncio.timeout(self._timeout_s * 2):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise SharedLimiterDown(exc.__class__.__name__) from None

    async def take(self, key_id: str, rate: float, burst: int) -> None:
        """Take one token from the key's shared bucket or raise 429 with Retry-After."""
        reply: Any = await self._call(lambda: self._take(keys=[f"{PREFIX}bucket:{key_id}"], args=[rate, burst]))
        taken, tokens = int(reply[0]), float(reply[1])
        if not taken:
            raise rate_limited(rate, (1.0 - tokens) / rate)

    async def open_slot(self, key_id: str, cap: int, ttl_s: float) -> str:
        """Hold one of the key's `cap` stream slots for ttl_s (renew it to keep it) or raise 429."""
        slot_id = secrets.token_hex(8)
        held = await self._call(
            lambda: self._open(keys=[_slots(key_id)], args=[cap, slot_id, _ms(ttl_s)])
        )
        if not int(held):
            raise streams_exceeded(cap)
        return slot_id

    async def renew(self, key_id: str, slot_id: str, ttl_s: float) -> None:
        await self._call(lambda: self._renew(keys=[_slots(key_id)], args=[slot_id, _ms(ttl_s)]))

    async def release(self, key_id: str, slot_id: str) -> None:
        await self._call(lambda: self._client.zrem(_slots(key_id), slot_id))

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass


def _slots(key_id: str) -> str:
    return f"{PREFIX}streams:{key_id}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
