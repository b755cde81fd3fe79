"""ASGI entry for the overhead benchmark: Rapport with personalization off, in front of the fake upstream.

    RAPPORT_BENCH_UPSTREAM=http://127.0.0.1:PORT/v1 RAPPORT_BENCH_FAST_PATH=1 RAPPORT_BENCH_DATA=/tmp/dir \
        python -m uvicorn bench.rapport_server:app --port 8090 --workers 1

RAPPORT_BENCH_TRANSPORT=aiohttp|httpx picks the fast path's HTTP client (`upstream.transport`; aiohttp by default).
`plugins=()` builds no memory/RPM/VAS stage at all, so the numbers are the gateway's own cost: auth, body
parsing and validation, identity, pipeline bookkeeping, the upstream call and the response.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from proxy.app import create_app
from proxy.settings import RapportSettings

MODEL = "m"


def build() -> FastAPI:
    upstream = os.environ["RAPPORT_BENCH_UPSTREAM"]
    settings = RapportSettings.model_validate(
        {
            "data_dir": Path(os.environ.get("RAPPORT_BENCH_DATA", ".rapport-bench")),
            "local": {"enabled": False},
            "model_list": [
                {"model_name": MODEL, "litellm_params": {"model": "openai/fake", "api_base": upstream, "api_key": "x"}}
            ],
            "upstream": {
                "fast_path": os.environ.get("RAPPORT_BENCH_FAST_PATH", "1") == "1",
                "transport": os.environ.get("RAPPORT_BENCH_TRANSPORT", "aiohttp"),
            },
            "server": {"log_level": "warning"},
        }
    )
    return create_app(settings, plugins=())


app = build()
