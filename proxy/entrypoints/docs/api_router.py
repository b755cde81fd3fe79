"""`/docs` (Swagger UI) and `/redoc` (ReDoc) with every asset served by Rapport.

Why not FastAPI's defaults: they load Swagger UI, ReDoc and a web font from public CDNs, so an operator on an
offline or locked-down network gets a blank page. The assets come from the `fastapi-offline` wheel (a packaged
copy of Swagger UI and ReDoc); only its files are used."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

ASSET_PREFIX = "/docs/assets"
# The only files served, with their media types: a fixed map, so no request path reaches the filesystem.
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


# The pages may load only what Rapport serves. Why a policy and not only local URLs: ReDoc's bundle also fetches
# a decorative logo from its vendor's CDN; under this policy the browser never sends that request (the logo
# hides itself when it cannot load). Inline scripts: both pages boot from a short inline <script>.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'"
)


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def _asset_bytes(name: str) -> bytes:
    return resources.files("fastapi_offline").joinpath("static", name).read_bytes()


def build_docs_router(*, title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    router = APIRouter(include_in_schema=False)
    cache: dict[str, bytes] = {}

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return _with_policy(get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{ASSET_PREFIX}/favicon.png",
        ))

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return _with_policy(get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            redoc_js_url=f"{ASSET_PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSET_PREFIX}/favicon.png",
            with_google_fonts=False,
        ))

    @router.get(ASSET_PREFIX + "/{name}")
    async def asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="Not found")
        if name not in cache:
            cache[name] = _asset_bytes(name)
        # Versioned by Rapport's release, not by name: a day of caching keeps reloads cheap and upgrades visible.
        return Response(cache[name], media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    return router
