"""/docs and /redoc work offline: every script, style sheet and icon they load is served by Rapport."""

from __future__ import annotations

import re

import httpx
import pytest


def _loaded_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(
        r"""\burl\s*:\s*['"]([^'"]+)['"]""", html
    )


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_only_what_rapport_serves(make_rapport, page: str) -> None:
    rapport = make_rapport()
    with httpx.Client(base_url=rapport.url, timeout=30) as client:
        response = client.get(page)
        assert response.status_code == 200
        urls = _loaded_urls(response.text)
        assert urls, "the page loads its assets"
        for url in urls:
            assert url.startswith("/"), f"{page} loads {url} from outside Rapport"
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "fonts.googleapis.com" not in response.text
        assert "cdn.jsdelivr.net" not in response.text


def test_assets_have_their_media_types_and_nothing_else_is_served(make_rapport) -> None:
    rapport = make_rapport()
    with httpx.Client(base_url=rapport.url, timeout=30) as client:
        js = client.get("/docs/assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        for bad in ("/docs/assets/..%2F..%2Fpyproject.toml", "/docs/assets/core.py", "/docs/assets/missing.js"):
            assert client.get(bad).status_code == 404, bad
        spec = client.get("/openapi.json")
        assert spec.status_code == 200
        paths = spec.json()["paths"]
        assert "/v1/chat/completions" in paths
        assert not any(p.startswith("/docs") for p in paths), "the docs routes stay out of the API description"
