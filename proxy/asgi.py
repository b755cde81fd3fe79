"""ASGI entry for uvicorn workers: each worker builds its app from the same file + env settings."""

from __future__ import annotations

from fastapi import FastAPI

from proxy.app import create_app
from proxy.settings import load_settings


def app_factory() -> FastAPI:
    return create_app(load_settings())
