"""Soak: hold a concurrency level against a real `rapport serve` process with memory on, for a while.

A fast local fake upstream (`bench/fake_upstream.py`, its own process) answers every call, so what is
measured is Rapport with memory: each chat names one of many users, gets a memory block composed from that
user's past turns, and records its own turn after the response. At the end the items written are counted
through the admin API and compared with the successful chats (each stores exactly one user turn).

    python bench/soak.py                          # concurrency 64 for 10 minutes
    python bench/soak.py --duration 60 --concurrency 16
    python bench/soak.py --replicas 2 --duration 60  # N replicas on one PostgreSQL (bench/soak_replicas.py)

Before measuring, every user is touched once (one chat each) and then a short load warms the caches, so the
RSS taken at the start already includes each user's Chroma collection being opened; RSS is then sampled every
few seconds through the measured load, so growth in the steady state (a leak) is told apart from warm-up.

Reports requests served, 5xx count, items written against expected, latency percentiles, the server's RSS
after warm-up, at the end and over time, and the load average; writes `bench/results/soak.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ADMIN_KEY = "soak-admin-key-0123456789"
API_KEY = "rk-soak-key"
_SEQ = itertools.count()
TOPICS = ["hiking", "jazz", "sourdough", "chess", "cycling", "tea", "birds", "sci-fi", "gardening", "python"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and its children (uvicorn may fork workers)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids.extend(int(c) for c in children)
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class FakeUpstreamProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def write_config(
    data_dir: Path, upstream: str, memory: dict[str, Any] | None = None, server: dict[str, Any] | None = None, **sections: Any
) -> Path:
    """A YAML config for `rapport serve`; `sections` add top-level settings (e.g. `rpm={...}`)."""
    import yaml

    config = {
        "data_dir": str(data_dir),
        "local": {"enabled": False},
        "model_list": [
            {"model_name": "m", "litellm_params": {"model": "openai/fake", "api_base": upstream, "api_key": "x"}}
        ],
        "auth": {"admin_key": ADMIN_KEY, "static_keys": [{"key": API_KEY, "tenant": "soak"}]},
        "memory": {"summary_every": 25, **(memory or {})},
        "server": {"log_level": "warning", **(server or {})},
        **sections,
    }
    path = data_dir.parent / f"{data_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class RapportProcess:
    """`rapport serve` in its own process group (so kill -9 takes the whole server), on a free port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> RapportProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
        env = {k: v for k, v in env.items() if not (k.startswith("RAPPORT_") and k != "RAPPORT_CONFIG")}
        env.pop("RAPPORT_CONFIG", None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config), "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rapport serve exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"rapport serve did not become ready in {timeout}s; see {self.log}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook, no flush, like a power cut."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    ok_chats: int = 0
    # Each transport error: what it was ("chat: ReadError: ..."), when it came (seconds into its phase) and
    # how long its request had run. A count alone cannot tell a client-pool race (resets at one instant, on
    # requests that never reached the server) from a server that cut responses.
    transport_errors: list[dict[str, float | str]] = field(default_factory=list)
    phase: str = "load"
    phase_started: float = field(default_factory=time.monotonic)

    def transport_error(self, exc: BaseException, where: str, request_started: float) -> None:
        self.transport_errors.append(
            {
                "kind": f"{where}: {type(exc).__name__}: {str(exc)[:120]}",
                "phase": self.phase,
                "at_s": round(time.monotonic() - self.phase_started, 2),
                "after_ms": round((time.perf_counter() - request_started) * 1000.0, 1),
            }
        )


async def _worker(client: httpx.AsyncClient, url: str, worker: int, users: int, stop_at: float, tally: Tally) -> None:
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        user = f"user-{(worker * 7919 + n) % users}"
        topic = TOPICS[(worker + n) % len(TOPICS)]
        body = {
            "model": "m",
            # A unique text per request: the memory store drops exact duplicates for a user, by design.
            "messages": [{"role": "user", "content": f"I enjoy {topic}; soak turn {next(_SEQ)}. Any tips?"}],
            "stream": n % 4 == 0,
        }
        started = time.perf_counter()
        try:
            response = await client.post(
                f"{url}/v1/chat/completions",
                headers={"authorization": f"Bearer {API_KEY}", "x-rapport-user": user},
                json=body,
            )
            await response.aread()
        except httpx.HTTPError as exc:
            tally.transport_error(exc, "stream" if body["stream"] else "chat", started)
            continue
        tally.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        tally.statuses[response.status_code] += 1
        if response.status_code == 200 and b'"error"' not in response.content[-400:]:
            tally.ok_chats += 1


async def touch_users(url: str, concurrency: int, users: int) -> Tally:
    """One chat for every user, so that each user's collection exists and is open before RSS is taken."""
    tally = Tally(phase="touch")
    pending = iter(range(users))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for index in pending:
            body = {"model": "m", "messages": [{"role": "user", "content": f"Hello, I am user {index}; turn {next(_SEQ)}."}]}
            started = time.perf_counter()
            try:
                response = await client.post(
                    f"{url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {API_KEY}", "x-rapport-user": f"user-{index}"},
                    json=body,
                )
            except httpx.HTTPError as exc:
                tally.transport_error(exc, "touch", started)
                continue
            tally.latencies_ms.append((time.perf_counter() - started) * 1000.0)
            tally.statuses[response.status_code] += 1
            tally.ok_chats += response.status_code == 200

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(min(concurrency, users))))
    return tally


class RSSSampler:
    """Samples the server's RSS every `every` seconds on a thread while the load runs."""

    def __init__(self, pid: int, every: float = 5.0) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def _run(self) -> None:
        while True:
            self.samples.append((round(time.monotonic() - self._started, 1), round(rss_bytes(self.pid) / 2**20, 1)))
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> RSSSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def load(url: str, concurrency: int, users: int, seconds: float, phase: str = "load") -> Tally:
    tally = Tally(phase=phase)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        stop_at = time.monotonic() + seconds
        ticker = asyncio.create_task(_progress(tally, seconds, stop_at))
        await asyncio.gather(*(_worker(client, url, w, users, stop_at, tally) for w in range(concurrency)))
        ticker.cancel()
    return tally


async def _progress(tally: Tally, seconds: float, stop_at: float) -> None:
    from tqdm import tqdm

    with tqdm(total=round(seconds), unit="s", desc="load", file=sys.stderr, leave=False) as bar:
        while True:
            await asyncio.sleep(1.0)
            bar.n = min(round(seconds), round(seconds - (stop_at - time.monotonic())))
            bar.set_postfix(served=sum(tally.statuses.values()), e5xx=sum(n for s, n in tally.statuses.items() if s >= 500))
            bar.refresh()


def loop_lag(url: str) -> dict[str, float]:
    """The server's event-loop lag so far, from /metrics: the worst stall and how many 100 ms ticks
    came late by more than 0.25 s and 1 s."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rapport_event_loop_lag_max_seconds":
                out["max_s"] = round(sample.value, 3)
            elif sample.name == "rapport_event_loop_lag_seconds_count":
                out["ticks"] = sample.value
            elif sample.name == "rapport_event_loop_lag_seconds_bucket" and sample.labels["le"] in ("0.25", "1.0"):
                out[f"le_{sample.labels['le']}"] = sample.value
    ticks = out.get("ticks", 0.0)
    return {
        "max_s": out.get("max_s", float("nan")),
        "ticks": ticks,
        "late_over_0.25s": ticks - out.get("le_0.25", ticks),
        "late_over_1s": ticks - out.get("le_1.0", ticks),
    }


def count_items(url: str) -> int:
    total, offset = 0, 0
    with httpx.Client(timeout=60, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as client:
        while True:
            page = client.get(f"{url}/admin/users", params={"tenant": "soak", "limit": 1000, "offset": offset}).json()
            total += sum(int(row["items"]) for row in page["data"])
            offset += len(page["data"])
            if not page["data"] or offset >= page["total"]:
                return total


def wait_items(url: str, expected: int, timeout: float, settle: float = 15.0) -> int:
    """Recording happens after each response, in the background: poll until the count reaches the
    expectation, or stops moving for `settle` seconds (a loss), or `timeout` passes."""
    deadline = time.monotonic() + timeout
    seen, moved = count_items(url), time.monotonic()
    while seen < expected and time.monotonic() < deadline and time.monotonic() - moved < settle:
        time.sleep(0.5)
        now = count_items(url)
        if now != seen:
            seen, moved = now, time.monotonic()
    time.sleep(1.0)  # anything still in flight would push the count past `expected` (a duplicate)
    return count_items(url)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100.0 * (len(ordered) - 1)))]


def run_soak(
    *,
    duration: float,
    concurrency: int,
    users: int,
    warmup: float,
    workdir: Path | None = None,
    server_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="rapport-soak-"))
    upstream = FakeUpstreamProcess()
    config = write_config(workdir / "data", upstream.base_url, server=server_settings)
    server = RapportProcess(config, workdir / "server.log")
    try:
        server.start()
        rss_ready = rss_bytes(server.pid)
        touched = asyncio.run(touch_users(server.url, concurrency, users))
        # Wait until every warm-up turn is recorded, so the measured window starts from a drained server.
        wait_items(server.url, touched.ok_chats, timeout=600)
        warm = asyncio.run(load(server.url, concurrency, users, warmup, phase="warm-up"))
        wait_items(server.url, touched.ok_chats + warm.ok_chats, timeout=600)
        rss_start = rss_bytes(server.pid)
        load_before = os.getloadavg()
        started = time.monotonic()
        with RSSSampler(server.pid) as sampler:
            tally = asyncio.run(load(server.url, concurrency, users, duration))
        elapsed = time.monotonic() - started
        rss_end = rss_bytes(server.pid)
        lag = loop_lag(server.url)
        expected = touched.ok_chats + warm.ok_chats + tally.ok_chats
        written = wait_items(server.url, expected, timeout=600)
        rss_drained = rss_bytes(server.pid)
        load_after = os.getloadavg()
    finally:
        server.stop()
        upstream.stop()
    samples = sampler.samples
    errors = touched.transport_errors + warm.transport_errors + tally.transport_errors
    half = [mb for t, mb in samples if t >= elapsed / 2]
    served = sum(tally.statuses.values())
    errors_5xx = sum(n for status, n in tally.statuses.items() if status >= 500)
    return {
        "duration_s": round(elapsed, 1),
        "concurrency": concurrency,
        "users": users,
        "requests_served": served,
        "throughput_rps": round(served / elapsed, 1) if elapsed else 0.0,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors_5xx": errors_5xx,
        "transport_errors": len(errors),
        "transport_error_kinds": dict(Counter(str(error["kind"]) for error in errors)),
        "transport_error_times": errors,
        "event_loop_lag": lag,
        "warmup_errors_5xx": sum(n for status, n in (touched.statuses + warm.statuses).items() if status >= 500),
        "items_expected": expected,
        "items_written": written,
        "latency_ms": {
            "p50": round(percentile(tally.latencies_ms, 50), 1),
            "p95": round(percentile(tally.latencies_ms, 95), 1),
            "p99": round(percentile(tally.latencies_ms, 99), 1),
            "max": round(max(tally.latencies_ms, default=float("nan")), 1),
        },
        "rss_ready_mb": round(rss_ready / 2**20, 1),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_drained_mb": round(rss_drained / 2**20, 1),
        "rss_growth_pct": round(100.0 * (rss_end - rss_start) / rss_start, 1) if rss_start else None,
        # Growth over the second half of the measured window only: a leak keeps growing there.
        "rss_second_half_growth_pct": (
            round(100.0 * (half[-1] - half[0]) / half[0], 1) if len(half) >= 2 and half[0] else None
        ),
        "rss_samples_mb": samples,
        "users_touched": touched.ok_chats,
        "warmup_s": warmup,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "server_log": str(server.log),
    }


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Rapport soak: concurrency {result['concurrency']}, {result['duration_s']} s, memory on")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    rows = [
        ("requests served", f"{result['requests_served']} ({result['throughput_rps']}/s)", ""),
        ("5xx responses", str(result["errors_5xx"]), "0"),
        ("transport errors", str(result["transport_errors"]), "0"),
        ("items written / expected", f"{result['items_written']} / {result['items_expected']}", "equal"),
        ("latency p50 / p95 / p99 (ms)", "{p50} / {p95} / {p99}".format(**result["latency_ms"]), ""),
        ("server RSS ready / warm -> end (MB)", f"{result['rss_ready_mb']} / {result['rss_start_mb']} -> {result['rss_end_mb']}", ""),
        ("RSS growth warm -> end", f"{result['rss_growth_pct']}%", "< 10%"),
        ("RSS growth, second half", f"{result['rss_second_half_growth_pct']}%", ""),
        ("event-loop lag, worst (s)", str(result["event_loop_lag"]["max_s"]), ""),
        ("load average before -> after", f"{result['loadavg_before'][0]} -> {result['loadavg_after'][0]}", ""),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of measured load (default 600; 60 per run with --replicas)"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=500, help="distinct end users the load spreads over")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of load after every user was touched, before RSS is taken")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/soak.json (soak_replicas.json with --replicas)")
    parser.add_argument(
        "--replicas", type=int, default=0,
        help="run 1 and then N replicas on one shared PostgreSQL instead (see bench/soak_replicas.py)",
    )
    parser.add_argument(
        "--database-url", default=None, help="with --replicas: a PostgreSQL server to create the runs' databases on "
        "(default: a pgserver started by the bench)",
    )
    args = parser.parse_args()
    if args.replicas:
        # Run as a script, only bench/ is on the path; the replica soak imports this module as `bench.soak`.
        sys.path.insert(0, str(ROOT))
        from bench.soak_replicas import main as soak_replicas

        args.duration = 60.0 if args.duration is None else args.duration
        args.out = args.out or RESULTS / "soak_replicas.json"
        soak_replicas(args)
        return
    args.duration = 600.0 if args.duration is None else args.duration
    args.out = args.out or RESULTS / "soak.json"
    print(f"soak: concurrency {args.concurrency} for {args.duration:g}s after {args.warmup:g}s warm-up ...", flush=True)
    result = run_soak(duration=args.duration, concurrency=args.concurrency, users=args.users, warmup=args.warmup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    report(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
