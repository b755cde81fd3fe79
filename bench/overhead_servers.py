"""The overhead bench's server processes (fake upstream, Rapport, LiteLLM's proxy) and CPU accounting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / ".venv-litellm"
MASTER_KEY = "sk-bench-master"
ADMIN_KEY = "sk-bench-admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, process: subprocess.Popen[bytes], deadline_s: float, headers: dict[str, str] | None = None
) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready ({url})")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready in {deadline_s:.0f}s: {url}")


@dataclass
class Server:
    name: str
    base_url: str  # ends in /v1
    process: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()


def start_fake_upstream(workdir: Path) -> Server:
    log = (workdir / "fake_upstream.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"fake upstream did not start: {line!r}")
    return Server("upstream", f"http://127.0.0.1:{int(line.split()[1])}/v1", process, log)


def start_rapport(
    name: str,
    upstream: str,
    workdir: Path,
    *,
    fast_path: bool = True,
    transport: str = "aiohttp",
    plugins: str = "default",
) -> Server:
    port = free_port()
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAPPORT_BENCH_UPSTREAM": upstream,
        "RAPPORT_BENCH_FAST_PATH": "1" if fast_path else "0",
        "RAPPORT_BENCH_TRANSPORT": transport,
        "RAPPORT_BENCH_PLUGINS": plugins,
        "RAPPORT_BENCH_DATA": str(data),
        "RAPPORT_BENCH_KEY": MASTER_KEY,
        "RAPPORT_BENCH_ADMIN_KEY": ADMIN_KEY,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    log = (workdir / f"{name}.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.rapport_server:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, f"http://127.0.0.1:{port}/v1", process, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", process, 300)
    except RuntimeError:
        server.stop()
        raise
    return server


def litellm_proxy_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return "missing"
    code = "from importlib.metadata import version; print(version('litellm'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "missing"


def start_litellm_proxy(upstream: str, workdir: Path) -> Server:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError("the LiteLLM proxy venv is missing: run bench/setup_litellm_proxy.sh first")
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: m\n"
        "    litellm_params:\n"
        "      model: openai/fake\n"
        f"      api_base: {upstream}\n"
        "      api_key: x\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    log = (workdir / "litellm-proxy.log").open("wb")
    cmd = [
        str(exe),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    process = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server("litellm-proxy", f"http://127.0.0.1:{port}/v1", process, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", process, 300)
    except RuntimeError:
        server.stop()
        raise
    return server


# -- CPU accounting ---------------------------------------------------------------------------------------


def _proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """(children by parent pid, own user+system CPU seconds by pid) for every process in /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
        children.setdefault(int(fields[1]), []).append(pid)
    return children, cpu


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process and its live descendants, so a server's cost per request can be
    read even when the shared machine's load stretches wall-clock latency."""
    children, cpu = _proc_table()
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def own_cpu_seconds() -> float:
    """CPU of this bench: itself, its finished (waited) children such as load generators, and its live servers."""
    times = os.times()
    live = tree_cpu_seconds(os.getpid()) - (times.user + times.system)
    return times.user + times.system + times.children_user + times.children_system + live


def machine_busy_seconds() -> float:
    """CPU seconds all processes used since boot (every core), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadProbe:
    """How much of the machine other processes used while a cell ran: the bench's own CPU (servers, load
    generator, upstream) is subtracted from the machine's, so the bench's load does not flag itself."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()
        self.busy_before = machine_busy_seconds()
        self.ours_before = own_cpu_seconds()
        self.started = time.monotonic()

    def finish(self) -> dict[str, Any]:
        wall = max(1e-9, time.monotonic() - self.started)
        busy = machine_busy_seconds() - self.busy_before
        ours = own_cpu_seconds() - self.ours_before
        cpus = os.cpu_count() or 1
        return {
            "loadavg_before": [round(x, 2) for x in self.load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "foreign_cpu_share": round(max(0.0, busy - ours) / (wall * cpus), 3),
            "own_cpu_share": round(ours / (wall * cpus), 3),
        }


def wait_idle(pid: int, deadline_s: float = 120.0, window_s: float = 1.0, idle_share: float = 0.05) -> float:
    """Block until a server's process tree uses under `idle_share` of one core over a window (its seeding
    work, embedding and flushing, is done); returns the seconds waited. Raises when it never settles."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        before = tree_cpu_seconds(pid)
        time.sleep(window_s)
        if tree_cpu_seconds(pid) - before < idle_share * window_s:
            return time.monotonic() - started
    raise RuntimeError(f"server {pid} did not go idle within {deadline_s:.0f}s")
