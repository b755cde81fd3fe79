"""A real headless Chromium (Debian's package) driven by Playwright, with the network outside 127.0.0.1 cut off."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium is not installed: run scripts/bootstrap.sh as root (apt-get install chromium)")


@contextmanager
def offline_page() -> Iterator[tuple[Any, list[str]]]:
    """A page whose every request to a host other than this machine is aborted and recorded, so a test both
    proves the page works offline and sees what it tried to fetch."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            context = browser.new_context()

            def route(route: Any) -> None:
                host = urlsplit(route.request.url).hostname or ""
                if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            context.route("**/*", route)
            yield context.new_page(), blocked
        finally:
            browser.close()
