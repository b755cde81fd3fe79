"""Recordings still in flight, per user, so that a user's next request can wait (briefly) for them.

An exchange is recorded after its response has gone, off the request path. A client that sends its next
message at once (a chat UI, an agent loop) would otherwise be answered without the turn it just made: the
issue's LangChain trial missed a stated allergy in the very next request and found it 1.5 s later. The
stage marks a recording as begun when it is scheduled (before the response finishes), and a new request for
the same user waits, up to a bound, until the ones begun before it are done. One process only: across
replicas, a recorded exchange becomes visible within the store's own delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Key = tuple[str, str]
# A recording that never reports done (its task was lost) stops holding requests back after this long.
STALE_AFTER_S = 30.0


@dataclass(slots=True)
class _Pending:
    started: float
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RecordingsInFlight:
    def __init__(self) -> None:
        self._pending: dict[Key, list[_Pending]] = {}

    def begin(self, key: Key) -> Callable[[], None]:
        """Mark one recording for `key` as begun; call the returned function when it is done (once)."""
        entry = _Pending(time.monotonic())
        self._pending.setdefault(key, []).append(entry)

        def finish() -> None:
            entry.done.set()
            entries = self._pending.get(key)
            if entries is not None:
                entries[:] = [e for e in entries if not e.done.is_set()]
                if not entries:
                    del self._pending[key]

        return finish

    def count(self, key: Key) -> int:
        return len(self._pending.get(key, ()))

    async def wait(self, key: Key, timeout_s: float) -> bool:
        """Wait until the recordings of `key` begun before now are done, or `timeout_s`; True if none was left."""
        now = time.monotonic()
        waiting = [e for e in self._pending.get(key, ()) if now - e.started < STALE_AFTER_S]
        if not waiting or timeout_s <= 0:
            return not waiting
        try:
            async with asyncio.timeout(timeout_s):
                for entry in waiting:
                    await entry.done.wait()
        except TimeoutError:
            return False
        return True
