"""Small helpers shared by tests: an admin HTTP client and polling a condition with a deadline."""

from __future__ import annotations

import time
from typing import Any

import httpx


def admin(h: Any, timeout: float = 60.0) -> httpx.Client:
    """An httpx client for a running Rapport's admin API, with its admin key."""
    return httpx.Client(base_url=h.url, headers={"Authorization": f"Bearer {h.admin_key}"}, timeout=timeout)


def wait_until(check: Any, within: float = 60.0) -> Any:
    """Poll `check()` until it returns something truthy (and return that), or fail at the deadline."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.05)
