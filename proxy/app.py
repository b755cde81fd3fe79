"""The ASGI application: routes, error handlers, middleware and the services' lifecycle."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy import __version__
from proxy.entrypoints.chat.api_router import router as chat_router
from proxy.entrypoints.chat.serving import ChatServing
from proxy.entrypoints.common import loc_to_param
from proxy.entrypoints.completions.api_router import router as completions_router
from proxy.entrypoints.docs.api_router import build_docs_router
from proxy.entrypoints.embeddings.api_router import router as embeddings_router
from proxy.entrypoints.health.api_router import router as health_router
from proxy.entrypoints.models.api_router import router as models_router
from proxy.entrypoints.responses.api_router import router as responses_router
from proxy.entrypoints.responses.serving import ResponsesServing
from proxy.entrypoints.responses.store import SqlResponseStore, responses_part
from proxy.entrypoints.responses.store_schema import STORE as RESPONSES_STORE
from proxy.errors import InvalidRequest, NotFound, RapportError, ServiceUnavailable
from proxy.looplag import LoopLagMonitor
from proxy.middleware import BodyLimitMiddleware, MetricsMiddleware
from proxy.plugins import DEFAULT_PLUGINS, load_plugins
from proxy.ratelimit import DegradedLimitsHeader
from proxy.services import Services
from proxy.settings import RapportSettings
from rapport.core.database import DatabaseUnavailable

log = logging.getLogger("rapport")


def _error_response(error: RapportError) -> Response:
    return Response(
        content=orjson.dumps(error.to_body()),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RapportError)
    async def _rapport_error(request: Request, exc: RapportError) -> Response:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        param = loc_to_param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return _error_response(InvalidRequest(f"Malformed JSON in request body: {first['msg']}", code="invalid_json"))
        return _error_response(InvalidRequest(f"Invalid value for '{param}': {first['msg']}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _error_response(NotFound(f"No route {request.method} {request.url.path}."))
        error = RapportError(str(exc.detail), code=f"http_{exc.status_code}")
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(error)

    # A database that cannot be reached (PostgreSQL down, its pool exhausted): the write was not done, so the
    # client is told to retry (503), never an internal error; the replica recovers once the database is back.
    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(sa_exc.OperationalError)
    @app.exception_handler(sa_exc.TimeoutError)
    async def _database_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
        return _error_response(
            ServiceUnavailable("The database is unavailable; retry later.", code="database_unavailable")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(RapportError("Internal server error.", code="internal_error"))


def _install_openapi(app: FastAPI) -> None:
    """Publish a self-contained spec: request bodies given as inline pydantic JSON schemas carry their nested
    models in `$defs` while their `$ref`s point at `#/components/schemas/...`; hoist those definitions there,
    or clients and fuzzers see dangling references (and, for example, no chat request body at all)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                content = (operation.get("requestBody") or {}).get("content") or {}
                for media in content.values():
                    schema = media.get("schema") or {}
                    for name, definition in (schema.pop("$defs", None) or {}).items():
                        components.setdefault(name, definition)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: RapportSettings, plugins: tuple[str, ...] = DEFAULT_PLUGINS) -> FastAPI:
    services = Services.build(settings)
    services.upstream.observe = lambda model, seconds: services.metrics.upstream_latency.labels(model).observe(seconds)
    services.plugins = load_plugins(services, plugins)
    lag_monitor = LoopLagMonitor(services.metrics, stall_log_s=settings.server.loop_stall_log_s)
    assert services.databases is not None  # Services.build opens them
    responses = ResponsesServing(
        services,
        SqlResponseStore(
            services.databases.for_store(RESPONSES_STORE),
            settings.responses.retention_days * 86400.0,
            migrate=settings.database.migrate_on_start,
        ),
    )
    if services.jobs is not None:
        # Stored responses are forgotten, exported and imported with the rest of what Rapport keeps of a user.
        services.jobs.userdata.register(responses_part(services.databases.for_store(RESPONSES_STORE)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        # After start the heap holds what lives as long as the process (models, routes, pools). A full
        # collection walks all of it: under load at concurrency 64 those collections froze the server for
        # 0.3-1 s (the p95/p99 tails of bench/overhead.py). Frozen, they are left out of every collection, which
        # then sees only request garbage (gen2 about 21 ms). Unfrozen at shutdown, so an app closed in a longer
        # lived process (tests, embedding) can still be collected.
        gc.collect()
        gc.freeze()
        lag_monitor.start()
        try:
            yield
        finally:
            gc.unfreeze()
            await lag_monitor.stop()
            await services.close()
            responses.store.close()

    app = FastAPI(
        title="Rapport",
        version=__version__,
        description="A personalization proxy for any LLM, OpenAI-compatible.",
        lifespan=lifespan,
        # Served by build_docs_router instead, with local assets (FastAPI's pages load them from CDNs).
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.chat_serving = ChatServing(services)
    app.state.responses_serving = responses
    _install_error_handlers(app)
    _install_openapi(app)
    for router in (chat_router, responses_router, completions_router, embeddings_router, models_router, health_router):
        app.include_router(router)
    app.include_router(build_docs_router(title=app.title))
    for plugin in services.plugins:
        for router in plugin.routers():
            app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    # A request limited per replica because the shared limiter was down says so in x-rapport-degraded.
    app.add_middleware(DegradedLimitsHeader)
    return app
