"""ASGI entry for the overhead benchmark: Rapport as it ships, in front of the fake upstream.

    RAPPORT_BENCH_UPSTREAM=http://127.0.0.1:PORT/v1 RAPPORT_BENCH_DATA=DIR \
        python -m uvicorn bench.rapport_server:app --port 8090 --workers 1

- RAPPORT_BENCH_FAST_PATH=1|0: the fast path (default) or litellm (`upstream.fast_path`).
- RAPPORT_BENCH_TRANSPORT=aiohttp|httpx: the fast path's HTTP client (`upstream.transport`; aiohttp by default).
- RAPPORT_BENCH_PLUGINS=default|none: the shipped stages (memory, RPM, VAS: they run only for a named user
  whose request or model turns them on) or no stage at all (the gateway's own cost).
- RAPPORT_BENCH_KEY / RAPPORT_BENCH_ADMIN_KEY: a proxy key (a static key of tenant `default`) and the admin
  key, so that authentication runs as in a deployment (open mode would skip the key lookup).

Model `m` is bridged for /v1/responses; model `m-pt` is the same deployment with `responses: passthrough`.
RPM runs its cheap extractor at construction and request time (no utility-LLM call: the fake upstream's
fixed answer would not parse), which is the configuration the bench's RPM row measures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from proxy.app import create_app
from proxy.plugins import DEFAULT_PLUGINS
from proxy.settings import RapportSettings

MODEL = "m"
PASSTHROUGH_MODEL = "m-pt"


def settings_from_env() -> RapportSettings:
    upstream = os.environ["RAPPORT_BENCH_UPSTREAM"]
    params = {"model": "openai/fake", "api_base": upstream, "api_key": "x"}
    auth: dict[str, Any] = {}
    if os.environ.get("RAPPORT_BENCH_KEY"):
        auth["static_keys"] = [{"key": os.environ["RAPPORT_BENCH_KEY"], "tenant": "default"}]
    if os.environ.get("RAPPORT_BENCH_ADMIN_KEY"):
        auth["admin_key"] = os.environ["RAPPORT_BENCH_ADMIN_KEY"]
    return RapportSettings.model_validate(
        {
            "data_dir": Path(os.environ.get("RAPPORT_BENCH_DATA", ".rapport-bench")),
            "local": {"enabled": False},
            "model_list": [
                {"model_name": MODEL, "litellm_params": params},
                {"model_name": PASSTHROUGH_MODEL, "litellm_params": params, "responses": "passthrough"},
            ],
            "upstream": {
                "fast_path": os.environ.get("RAPPORT_BENCH_FAST_PATH", "1") == "1",
                "transport": os.environ.get("RAPPORT_BENCH_TRANSPORT", "aiohttp"),
            },
            "auth": auth,
            "rpm": {"construction_mode": "cheap", "request_mode": "cheap"},
            "server": {"log_level": "warning"},
        }
    )


def build() -> FastAPI:
    plugins = DEFAULT_PLUGINS if os.environ.get("RAPPORT_BENCH_PLUGINS", "default") == "default" else ()
    return create_app(settings_from_env(), plugins=plugins)


app = build()
