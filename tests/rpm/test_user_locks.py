"""RPM's per-user build lock: builds of one user still run one at a time, and no lock outlives its use (a
lock per user ever built stayed in memory, growing with the users a replica served)."""

from __future__ import annotations

import asyncio

from reasoning.rpm.engine import UserLocks


async def test_one_user_at_a_time_and_nothing_left_after() -> None:
    locks = UserLocks()
    inside: list[str] = []
    overlap: list[bool] = []

    async def build(user: str, tag: str) -> None:
        async with locks.hold(("t", user)):
            overlap.append(any(u == user for u, _ in (i.split(":") for i in inside)))
            inside.append(f"{user}:{tag}")
            await asyncio.sleep(0)  # yield, so a second holder of the same user would get in if it could
            await asyncio.sleep(0)
            inside.remove(f"{user}:{tag}")

    await asyncio.gather(*(build(f"user-{n % 50}", str(n)) for n in range(200)))
    assert not any(overlap)
    assert len(locks) == 0


async def test_a_failed_build_releases_its_lock() -> None:
    locks = UserLocks()
    try:
        async with locks.hold(("t", "alice")):
            raise RuntimeError("extractor down")
    except RuntimeError:
        pass
    assert len(locks) == 0
    async with asyncio.timeout(5):
        async with locks.hold(("t", "alice")):
            assert len(locks) == 1
