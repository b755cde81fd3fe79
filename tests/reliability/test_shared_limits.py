"""Per-key limits shared across replicas through a real redis-server (issue 12, point 5).

Two real Rapport servers share one Redis: a key's rate limit and stream cap hold in total, not per replica; a
replica killed mid-stream frees its slot within the TTL while a live stream keeps its slot by heartbeat; with
Redis down requests are still served, limited per replica, and say so (x-rapport-degraded, a metric); with Redis
back the limits are shared again, without a restart.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.soak import API_KEY as SOAK_KEY
from bench.soak import RapportProcess, write_config
from proxy.auth.keys import hash_key, static_key_id
from proxy.ratelimit import DEGRADED
from tests.support.helpers import wait_until
from tests.support.redis import RedisServer
from tests.support.upstream import Reply, ScriptedUpstream

MSG = [{"role": "user", "content": "hello"}]
USER = "alice"


def slots(key: str) -> str:
    """The Redis set of a config key's stream slots."""
    return f"rapport:limits:streams:{static_key_id(hash_key(key))}"


def _chat(h: Any, *, stream: bool = False, key: str | None = None) -> httpx.Response:
    body = {"model": "test-model", "messages": MSG, "user": USER, "stream": stream}
    headers = {"Authorization": f"Bearer {key or h.api_key}"}
    return httpx.post(f"{h.base_url}/chat/completions", json=body, headers=headers, timeout=30)


def _streamed_text(response: httpx.Response) -> str:
    """Choice 0's content from an SSE body read whole."""
    parts = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[len("data: ") :]).get("choices") or []:
                if choice.get("index", 0) == 0:
                    parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def _degraded(response: httpx.Response) -> bool:
    return DEGRADED in response.headers.get("x-rapport-degraded", "")


def _sdk(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)


def _metric(h: Any, op: str) -> float:
    text = httpx.get(f"{h.url}/metrics", timeout=10).text
    prefix = f'rapport_limiter_degraded_total{{op="{op}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_rate_limit_of_one_key_holds_across_two_replicas(make_rapport, scripted_upstream, redis_server):
    limits = {"rate_limit_rps": 0.01, "rate_limit_burst": 5, "redis_url": redis_server.url}
    a, b = make_rapport(limits=limits), make_rapport(limits=limits)
    responses = [_chat((a, b)[i % 2]) for i in range(12)]
    statuses = Counter(r.status_code for r in responses)
    # The burst is the key's, not each replica's: 5 in total, then 429s from either replica.
    assert statuses == {200: 5, 429: 7}
    assert {r.status_code for r in responses[1::2]} == {200, 429}, "replica B served some and refused some"
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    assert not any(_degraded(r) for r in responses)
    assert len([r for r in scripted_upstream.requests if r.path.endswith("/chat/completions")]) == 5


def test_without_redis_each_replica_limits_on_its_own(make_rapport, scripted_upstream):
    """The documented default: no redis_url, limits per replica (two replicas admit twice the burst)."""
    limits = {"rate_limit_rps": 0.01, "rate_limit_burst": 5}
    a, b = make_rapport(limits=limits), make_rapport(limits=limits)
    statuses = Counter(_chat((a, b)[i % 2]).status_code for i in range(12))
    assert statuses == {200: 10, 429: 2}


def test_stream_slot_of_a_killed_replica_frees_after_the_ttl(
    tmp_path: Path, make_rapport, scripted_upstream: ScriptedUpstream, redis_server: RedisServer
):
    limits = {"max_concurrent_streams": 2, "redis_url": redis_server.url, "stream_slot_ttl_s": 1.5}
    config = write_config(tmp_path / "killed", scripted_upstream.base_url, limits=limits)
    dying = RapportProcess(config, tmp_path / "killed.log").start()
    try:
        # Same key (same id) on the in-process replica as on the subprocess.
        other = make_rapport(limits=limits, auth={"static_keys": [{"key": SOAK_KEY, "tenant": "soak"}]})
        hanging = Reply(kind="slow_stream", chunks=["held ", "open ", "x"], cut_after=2)
        scripted_upstream.script(hanging, hanging)
        held = _sdk(f"{dying.url}/v1", SOAK_KEY).chat.completions.create(model="m", messages=MSG, user=USER, stream=True)
        assert next(iter(held)).choices
        # A live stream on the surviving replica keeps the key's slot set alive (renewed) all along.
        live = _sdk(other.base_url, SOAK_KEY).chat.completions.create(model="test-model", messages=MSG, user=USER, stream=True)
        assert next(iter(live)).choices
        refused = _chat(other, stream=True, key=SOAK_KEY)
        assert refused.status_code == 429, "the cap is shared: the dying replica's stream counts on the other"
        assert refused.json()["error"]["code"] == "concurrent_streams_exceeded"
        dying.kill()  # SIGKILL mid-stream: nothing releases its slot
        held.close()
        with redis_server.client() as r:
            assert r.zcard(slots(SOAK_KEY)) == 2, "the dead replica's slot is still there until it expires"

        # Within the TTL (nobody renews it) the dead slot is pruned and a new stream on the survivor admitted.
        def admitted_stream() -> httpx.Response | None:
            response = _chat(other, stream=True, key=SOAK_KEY)
            return response if response.status_code == 200 else None

        # (Well within the upstream's 30 s timeout, which would end the live stream and free a slot too.)
        admitted = wait_until(admitted_stream, within=15)
        assert _streamed_text(admitted) == "echo: hello"
        assert not _degraded(admitted)
        assert other.services.limiter.held_streams() == 1, "the live stream still holds its slot"
        live.close()
        wait_until(lambda: not other.services.limiter.held_streams(), within=10)
    finally:
        dying.kill()


def test_a_live_stream_keeps_its_slot_past_the_ttl_and_gives_it_back_when_it_ends(
    make_rapport, scripted_upstream, redis_server
):
    ttl = 0.6
    limits = {"max_concurrent_streams": 1, "redis_url": redis_server.url, "stream_slot_ttl_s": ttl}
    a, b = make_rapport(limits=limits), make_rapport(limits=limits)
    scripted_upstream.script(Reply(kind="slow_stream", chunks=["held ", "open ", "x"], cut_after=2))
    held = _sdk(a.base_url, a.api_key).chat.completions.create(model="test-model", messages=MSG, user=USER, stream=True)
    assert next(iter(held)).choices
    with redis_server.client() as r:
        (first_expiry,) = [score for _, score in r.zrange(slots(a.api_key), 0, -1, withscores=True)]

        def renewed_past_ttls() -> bool:
            scores = [score for _, score in r.zrange(slots(a.api_key), 0, -1, withscores=True)]
            # Renewed so often that the slot outlives three of its first TTLs.
            return len(scores) == 1 and scores[0] > first_expiry + 3 * ttl * 1000

        wait_until(renewed_past_ttls, within=30)
        refused = _chat(b, stream=True)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrent_streams_exceeded"
        held.close()  # the client goes away mid-stream
        wait_until(lambda: r.zcard(slots(a.api_key)) == 0, within=10)
        assert a.services.limiter.held_streams() == 0
        assert _chat(b, stream=True).status_code == 200
        # A stream that fails mid-way gives its slot back too.
        scripted_upstream.script(Reply(kind="cut_stream", chunks=["a", "b", "c"], cut_after=1))
        assert "error" in _chat(a, stream=True).text
        wait_until(lambda: r.zcard(slots(a.api_key)) == 0 and not a.services.limiter.held_streams(), within=10)
        assert _chat(b, stream=True).status_code == 200


def test_redis_down_limits_per_replica_and_says_so_then_shared_again(make_rapport, scripted_upstream, redis_server):
    limits = {
        "rate_limit_rps": 0.01,
        "rate_limit_burst": 3,
        "max_concurrent_streams": 2,
        "redis_url": redis_server.url,
        "redis_timeout_s": 0.1,
        "redis_retry_s": 0.2,
    }
    a, b = make_rapport(limits=limits), make_rapport(limits=limits)
    redis_server.stop()
    # Served without Redis, limited by each replica's own bucket (3 each), every answer marked degraded.
    streamed = _chat(a, stream=True)
    assert streamed.status_code == 200 and _degraded(streamed) and _streamed_text(streamed) == "echo: hello"
    on_a = [_chat(a) for _ in range(3)]
    on_b = [_chat(b) for _ in range(4)]
    assert [r.status_code for r in on_a] == [200, 200, 429]
    assert [r.status_code for r in on_b] == [200, 200, 200, 429]
    assert all(_degraded(r) for r in on_a + on_b), "429s given per replica are marked too"
    assert _metric(a, "check") >= 4 and _metric(a, "open_stream") >= 1
    assert _metric(b, "check") >= 4
    redis_server.start()
    # Back without a restart: the first answer not marked degraded was limited by Redis again.
    def shared_again() -> httpx.Response | None:
        response = _chat(a)
        return None if _degraded(response) else response

    first = wait_until(shared_again, within=30)
    assert first.status_code == 200
    rest = [_chat((b, a)[i % 2]) for i in range(4)]
    assert [r.status_code for r in rest] == [200, 200, 429, 429], "the fresh shared bucket (3) holds across both"
    assert not any(_degraded(r) for r in rest)


def test_a_hung_redis_costs_a_short_timeout_not_the_request(make_rapport, scripted_upstream, redis_server):
    """SIGSTOP: Redis accepts connections and never answers (a stalled or overloaded server)."""
    limits = {
        "rate_limit_rps": 0.01,
        "rate_limit_burst": 5,
        "redis_url": redis_server.url,
        "redis_timeout_s": 0.1,
        "redis_retry_s": 0.2,
    }
    a = make_rapport(limits=limits)
    assert _chat(a).status_code == 200  # connected and shared
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        answered = []
        for _ in range(3):
            started = time.monotonic()
            answered.append(_chat(a))
            # redis_timeout_s (0.1 s) bounds the wait, not redis-py's default 5 s socket timeout.
            assert time.monotonic() - started < 4.0
        assert [r.status_code for r in answered] == [200, 200, 200]
        assert all(_degraded(r) for r in answered)
        assert _metric(a, "check") >= 3
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)

    def shared_again() -> httpx.Response | None:
        response = _chat(a)
        return None if _degraded(response) else response

    wait_until(shared_again, within=30)


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "postgresql://x@y/z"])
def test_redis_url_must_be_a_redis_url_and_is_never_shown(url):
    from pydantic import ValidationError

    from proxy.settings import RapportSettings

    with pytest.raises(ValidationError) as info:
        RapportSettings(limits={"redis_url": url})
    assert "limits.redis_url" in str(info.value) and url not in str(info.value)


def test_a_slot_dropped_without_close_is_given_back(redis_server):
    """A stream whose response never started (its body never iterated) never reaches close_stream: its slot
    still goes back, by the finalizer (counted here) or by the heartbeat stopping (in Redis)."""
    import asyncio
    import gc

    from proxy.ratelimit import RateLimiter
    from proxy.settings import LimitSettings

    async def scenario() -> None:
        for url in (redis_server.url, None):
            limiter = RateLimiter(LimitSettings(max_concurrent_streams=1, redis_url=url, stream_slot_ttl_s=0.3))
            slot = await limiter.open_stream("k")
            assert limiter.held_streams() == 1
            del slot
            gc.collect()
            for _ in range(200):  # poll with a deadline (10 s)
                if not limiter.held_streams():
                    break
                await asyncio.sleep(0.05)
            assert limiter.held_streams() == 0
            # And the key may stream again (in Redis: the slot was removed, not merely left to expire).
            await limiter.close_stream(await limiter.open_stream("k"))
            await limiter.close()

    asyncio.run(scenario())
    with redis_server.client() as r:
        assert r.zcard("rapport:limits:streams:k") == 0
