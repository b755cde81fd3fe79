"""The overhead bench's load generator: one series of requests from its own process (asyncio + aiohttp).

    python bench/overhead_loadgen.py PLAN.json

The plan names the URL, the headers, the request bodies (sent in turn, so each request can carry its own user
and its own text), the concurrency, the warm-up and measured counts, and the bytes that mark a complete stream.
It writes per-request TTFB and total times (ms), the error count and the wall time of the measured part to
the plan's `out` file. A separate process, so that the client's own CPU never shares a GIL with the bench.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

# A stream is complete when this appears in it: chat completions end with `data: [DONE]`, the Responses API
# with a `response.completed` event (whose data is the whole response, so it is not in the last bytes).
STREAM_END = {"chat": b"[DONE]", "responses": b"response.completed"}


async def one_request(
    session: Any, url: str, data: bytes, headers: dict[str, str], end_marker: bytes | None
) -> tuple[float, float]:
    """(ttfb_ms, total_ms) for one request; raises on a non-200 or an incomplete stream."""
    started = time.perf_counter()
    async with session.post(url, data=data, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
        first = 0.0
        tail = b""
        complete = end_marker is None
        async for piece in resp.content.iter_any():
            if not first:
                first = time.perf_counter()
            if not complete:
                # The marker may straddle two reads: look in the last bytes of the previous one plus this one.
                window = tail + piece
                complete = end_marker in window  # type: ignore[operator]
                tail = window[-64:]
        end = time.perf_counter()
    if not complete:
        raise RuntimeError("stream ended before its end marker")
    if not first:
        raise RuntimeError("empty body")
    return (first - started) * 1000.0, (end - started) * 1000.0


async def run_series(
    session: Any,
    url: str,
    headers: dict[str, str],
    bodies: list[bytes],
    end_marker: bytes | None,
    concurrency: int,
    count: int,
) -> dict[str, Any]:
    ttfb: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            data = bodies[next_index % len(bodies)]
            next_index += 1
            try:
                t, n = await one_request(session, url, data, headers, end_marker)
            except Exception as exc:  # counted and reported, never silently dropped
                errors.append(f"{exc.__class__.__name__}: {exc}"[:200])
                continue
            ttfb.append(t)
            total.append(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "ttfb_ms": ttfb,
        "total_ms": total,
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall,
    }


async def run_plan(plan: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    stream = bool(plan["stream"])
    marker = STREAM_END[plan["endpoint"]] if stream else None
    bodies = [b.encode() for b in plan["bodies"]]
    warmup, requests, concurrency = int(plan["warmup"]), int(plan["requests"]), int(plan["concurrency"])
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        # Warm-up and measured requests take different bodies, so no measured request repeats a warm-up text
        # (a repeated text would hit the query-embedding cache and hide what a new message costs).
        await run_series(
            session, plan["url"], plan["headers"], bodies[:warmup] or bodies, marker, concurrency, warmup
        )
        measured = bodies[warmup:] or bodies
        return await run_series(
            session, plan["url"], plan["headers"], measured, marker, concurrency, requests
        )


def main(plan_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text())
    try:
        import uvloop

        result = uvloop.run(run_plan(plan))
    except ImportError:
        result = asyncio.run(run_plan(plan))
    Path(plan["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
