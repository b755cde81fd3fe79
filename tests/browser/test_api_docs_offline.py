"""/docs and /redoc render in a real browser with no network beyond Rapport itself."""

from __future__ import annotations

from tests.support.browser import offline_page


def test_swagger_ui_renders_offline(make_rapport) -> None:
    rapport = make_rapport()
    with offline_page() as (page, blocked):
        page.goto(f"{rapport.url}/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert "Rapport" in page.inner_text(".swagger-ui .info .title")
        # The operations came from /openapi.json: the chat route is listed.
        page.get_by_text("/v1/chat/completions").first.wait_for(timeout=30_000)
    assert blocked == [], f"the page tried to reach {blocked}"


def test_redoc_renders_offline(make_rapport) -> None:
    rapport = make_rapport()
    with offline_page() as (page, blocked):
        page.goto(f"{rapport.url}/redoc")
        page.wait_for_selector("h1", timeout=30_000)
        assert "Rapport" in page.inner_text("h1")
        page.get_by_text("/v1/chat/completions").first.wait_for(timeout=30_000)
    assert blocked == [], f"the page tried to reach {blocked}"
