"""How much latency Rapport (personalization off) adds over calling the upstream directly, next to LiteLLM's proxy.

Every contender is its own server process (one worker each) in front of one shared fake upstream
(`bench/fake_upstream.py`), all in the same run:

- `direct`          the client calls the fake upstream itself (the baseline);
- `rapport`         Rapport, personalization off, fast path on its default aiohttp transport;
- `rapport-httpx`   the same with `upstream.transport=httpx` (what the HTTP client costs);
- `rapport-litellm` Rapport, personalization off, through litellm (`upstream.fast_path=false`);
- `litellm-proxy`   LiteLLM's own proxy server (`litellm --config`, from `.venv-litellm`, see
                    `bench/setup_litellm_proxy.sh`).

The load generator is an asyncio aiohttp client in a separate process. For non-stream and SSE stream requests
(time to first byte and total) at each concurrency it sends a warm-up, then a fixed number of requests. Each
contender's series run back to back; the whole sweep repeats `--rounds` times with the contender order rotated,
and samples are pooled over the rounds. Added latency is a contender's percentile minus direct's percentile.

    .venv/bin/python bench/overhead.py                 # full run: JSON, PNG and a table
    .venv/bin/python bench/overhead.py --quick         # a smoke run (few requests, one round)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LITELLM_VENV = ROOT / ".venv-litellm"
MASTER_KEY = "sk-bench-master"
MODES = ("non-stream", "stream")
CONTENDERS = ("direct", "rapport", "rapport-httpx", "rapport-litellm", "litellm-proxy")
PROXIES = CONTENDERS[1:]
COLORS = {"direct": "#7f7f7f", "rapport": "#1f77b4", "rapport-httpx": "#17becf", "rapport-litellm": "#ff7f0e",
          "litellm-proxy": "#d62728"}  # fmt: skip


# -- load generator (runs in its own process) ------------------------------------------------------------


def _payload(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Say hello to the benchmark in one short sentence, please."},
        ],
        "max_tokens": 32,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def _one(
    session: Any, url: str, data: bytes, headers: dict[str, str], stream: bool
) -> tuple[float, float]:
    """(ttfb_ms, total_ms) for one request; raises on a non-200 or an incomplete answer."""
    started = time.perf_counter()
    async with session.post(url, data=data, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
        first = 0.0
        tail = b""
        async for piece in resp.content.iter_any():
            if not first:
                first = time.perf_counter()
            tail = (tail + piece)[-64:]
        end = time.perf_counter()
    if stream and b"[DONE]" not in tail:
        raise RuntimeError("stream ended without [DONE]")
    if not first:
        raise RuntimeError("empty body")
    return (first - started) * 1000.0, (end - started) * 1000.0


async def _series(
    session: Any, url: str, headers: dict[str, str], stream: bool, concurrency: int, count: int
) -> dict[str, Any]:
    data = _payload(stream)
    ttfb: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            next_index += 1
            try:
                t, n = await _one(session, url, data, headers, stream)
            except Exception as exc:  # counted and reported, never silently dropped
                errors.append(f"{exc.__class__.__name__}: {exc}"[:200])
                continue
            ttfb.append(t)
            total.append(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "ttfb_ms": ttfb,
        "total_ms": total,
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall,
    }


async def _loadgen(plan: dict[str, Any]) -> list[dict[str, Any]]:
    import aiohttp

    url = plan["base_url"].rstrip("/") + "/chat/completions"
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    out: list[dict[str, Any]] = []
    for item in plan["series"]:
        connector = aiohttp.TCPConnector(limit=item["concurrency"], limit_per_host=item["concurrency"])
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            stream = item["mode"] == "stream"
            await _series(session, url, headers, stream, item["concurrency"], item["warmup"])
            result = await _series(session, url, headers, stream, item["concurrency"], item["requests"])
        out.append({**item, **result})
    return out


def loadgen_main(plan_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text())
    try:
        import uvloop

        results = uvloop.run(_loadgen(plan))
    except ImportError:
        results = asyncio.run(_loadgen(plan))
    Path(plan["out"]).write_text(json.dumps(results))


# -- servers --------------------------------------------------------------------------------------------


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
    base_url: str
    process: subprocess.Popen[bytes] | None = None
    log: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

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
    port = int(line.split()[1])
    return Server("upstream", f"http://127.0.0.1:{port}/v1", process, log)


def start_rapport(name: str, upstream: str, fast_path: bool, workdir: Path, transport: str = "aiohttp") -> Server:
    port = free_port()
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAPPORT_BENCH_UPSTREAM": upstream,
        "RAPPORT_BENCH_FAST_PATH": "1" if fast_path else "0",
        "RAPPORT_BENCH_TRANSPORT": transport,
        "RAPPORT_BENCH_DATA": str(data),
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    log = (workdir / f"{name}.log").open("wb")
    cmd = [
        sys.executable, "-m", "uvicorn", "bench.rapport_server:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, f"http://127.0.0.1:{port}/v1", process, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process, 120)
    except RuntimeError:
        server.stop()
        raise
    return server


def start_litellm_proxy(upstream: str, workdir: Path) -> Server:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing: run bench/setup_litellm_proxy.sh first")
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (from /proc), so a server's cost per request can
    be read even when the shared machine's load stretches wall-clock latency."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / tick
        todo.extend(children.get(current, []))
    return total


def run_loadgen(server: Server, upstream: Server, item: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One series (warm-up + measured requests) from a fresh load-generator process."""
    plan_file = workdir / "plan.json"
    out_file = workdir / "loadgen-out.json"
    out_file.unlink(missing_ok=True)
    plan_file.write_text(json.dumps({"base_url": server.base_url, "series": [item], "out": str(out_file)}))
    pids = {"server": server.process.pid if server.process else None, "upstream": upstream.process.pid if upstream.process else None}
    before = {k: _cpu_seconds(v) for k, v in pids.items() if v is not None}
    subprocess.run([sys.executable, __file__, "_loadgen", str(plan_file)], check=True, cwd=ROOT)
    after = {k: _cpu_seconds(v) for k, v in pids.items() if v is not None}
    result: dict[str, Any] = json.loads(out_file.read_text())[0]
    served = item["warmup"] + len(result["total_ms"])
    result["cpu_ms_per_request"] = {k: (after[k] - before[k]) * 1000.0 / max(1, served) for k in before}
    return result


# -- analysis -------------------------------------------------------------------------------------------


def pct(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan")}
    arr = np.asarray(samples)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(arr.mean()), 3),
    }


def metrics_of(mode: str) -> tuple[str, ...]:
    return ("total_ms",) if mode == "non-stream" else ("ttfb_ms", "total_ms")


def summarize(raw: dict[str, dict[str, dict[int, list[dict[str, Any]]]]]) -> dict[str, Any]:
    """Pool each (contender, mode, concurrency) over the rounds; added = contender percentile - direct's."""
    stats: dict[str, Any] = {}
    for name, modes in raw.items():
        for mode, levels in modes.items():
            for conc, runs in levels.items():
                entry: dict[str, Any] = {
                    "requests": sum(len(r["total_ms"]) for r in runs),
                    "errors": sum(r["errors"] for r in runs),
                    "rps": round(
                        sum(len(r["total_ms"]) for r in runs) / max(1e-9, sum(r["wall_s"] for r in runs)), 1
                    ),
                    "rps_per_round": [round(len(r["total_ms"]) / max(1e-9, r["wall_s"]), 1) for r in runs],
                }
                cpu = [r["cpu_ms_per_request"].get("server") for r in runs if "server" in r["cpu_ms_per_request"]]
                if cpu:
                    entry["server_cpu_ms_per_request"] = round(float(np.mean(cpu)), 3)
                entry["upstream_cpu_ms_per_request"] = round(float(np.mean([r["cpu_ms_per_request"]["upstream"] for r in runs])), 3)
                if any(r["error_samples"] for r in runs):
                    entry["error_samples"] = [e for r in runs for e in r["error_samples"]][:3]
                for metric in metrics_of(mode):
                    entry[metric] = pct([x for r in runs for x in r[metric]])
                    entry[metric]["p50_per_round"] = [pct(r[metric])["p50"] for r in runs]
                stats.setdefault(name, {}).setdefault(mode, {})[str(conc)] = entry
    added: dict[str, Any] = {}
    for name in stats:
        if name == "direct":
            continue
        for mode, levels in stats[name].items():
            for conc, entry in levels.items():
                base = stats["direct"][mode][conc]
                row: dict[str, Any] = {
                    "rps": entry["rps"],
                    "direct_rps": base["rps"],
                    "server_cpu_ms_per_request": entry.get("server_cpu_ms_per_request"),
                }
                for metric in metrics_of(mode):
                    key = metric.removesuffix("_ms")
                    row[key] = {
                        q: round(entry[metric][q] - base[metric][q], 3) for q in ("p50", "p95", "p99")
                    }
                    row[key]["p50_per_round"] = [
                        round(a - b, 3)
                        for a, b in zip(entry[metric]["p50_per_round"], base[metric]["p50_per_round"], strict=False)
                    ]
                added.setdefault(name, {}).setdefault(mode, {})[conc] = row
    return {"stats": stats, "added": added}


def goals(added: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    """The issue's goals, for each Rapport contender present: added p50 < 2 ms at c=1, below LiteLLM's proxy."""
    out: dict[str, Any] = {}
    for name in (n for n in added if n.startswith("rapport") and n != "rapport-litellm"):
        r = added[name]
        mine: dict[str, Any] = {}
        if "1" in r["non-stream"]:
            mine["added_p50_under_2ms_at_c1"] = {
                "non-stream": r["non-stream"]["1"]["total"]["p50"] < 2.0,
                "stream_ttfb": r["stream"]["1"]["ttfb"]["p50"] < 2.0,
            }
        if "litellm-proxy" in added:
            peer = added["litellm-proxy"]
            below: dict[str, bool] = {}
            for c in levels:
                k = str(c)
                below[f"non-stream/c{c}"] = r["non-stream"][k]["total"]["p50"] < peer["non-stream"][k]["total"]["p50"]
                below[f"stream-ttfb/c{c}"] = r["stream"][k]["ttfb"]["p50"] < peer["stream"][k]["ttfb"]["p50"]
                below[f"stream-total/c{c}"] = r["stream"][k]["total"]["p50"] < peer["stream"][k]["total"]["p50"]
            mine["added_p50_below_litellm_proxy"] = below
        out[name] = mine
    return out


# -- output ---------------------------------------------------------------------------------------------


def print_table(summary: dict[str, Any], levels: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Added latency over calling the upstream directly (ms; p50 / p95 / p99) and throughput"
    )
    for col in (
        "contender",
        "mode",
        "conc",
        "added (non-stream or TTFB)",
        "added stream total",
        "req/s",
        "direct req/s",
        "server CPU ms/req",
    ):
        table.add_column(col, justify="right" if col not in ("contender", "mode") else "left")
    for name, modes in summary["added"].items():
        for mode in MODES:
            for c in levels:
                row = modes[mode][str(c)]
                first = row["total"] if mode == "non-stream" else row["ttfb"]
                fmt = lambda d: f"{d['p50']:.2f} / {d['p95']:.2f} / {d['p99']:.2f}"  # noqa: E731
                table.add_row(
                    name, mode if mode == "non-stream" else "stream", str(c), fmt(first),
                    fmt(row["total"]) if mode == "stream" else "-", f"{row['rps']:.0f}", f"{row['direct_rps']:.0f}",
                    f"{row['server_cpu_ms_per_request']:.2f}",
                )  # fmt: skip
    Console(width=170).print(table)


def plot(summary: dict[str, Any], levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("non-stream", "total", "non-stream: added p50"), ("stream", "ttfb", "stream: added p50 TTFB"),
              ("stream", "total", "stream: added p50 total")]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    width = 0.8 / max(1, len(summary["added"]))
    x = np.arange(len(levels))
    for ax, (mode, metric, title) in zip(axes, panels, strict=False):
        for i, (name, modes) in enumerate(summary["added"].items()):
            vals = [modes[mode][str(c)][metric]["p50"] for c in levels]
            ax.bar(x + i * width, vals, width, label=name, color=COLORS.get(name))
        ax.axhline(2.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(x + width * (len(summary["added"]) - 1) / 2, [f"c={c}" for c in levels])
        ax.set_title(title)
        ax.set_ylabel("ms")
        ax.set_yscale("symlog", linthresh=1.0)
    ax = axes[3]
    names = ["direct", *summary["added"].keys()]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [summary["stats"][name]["non-stream"][str(c)]["rps"] for c in levels]
        ax.bar(x + i * width, vals, width, label=name, color=COLORS.get(name))
    ax.set_xticks(x + width * (len(names) - 1) / 2, [f"c={c}" for c in levels])
    ax.set_title("non-stream throughput (req/s)")
    axes[0].legend(fontsize=8)
    ax.legend(fontsize=8)
    fig.suptitle("Rapport (personalization off) vs LiteLLM proxy over one fake upstream (dashed: 2 ms goal)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("fastapi", "starlette", "uvicorn", "httpx", "litellm", "aiohttp", "uvloop", "httptools"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "missing"
    return out


# -- main -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--requests", type=int, default=300, help="requests per series at c=1 (x2 at c=16, x4 at c=64)"
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--quick", action="store_true", help="smoke run: one round, 40 requests")
    parser.add_argument("--out", default=str(RESULTS / "overhead.json"))
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    parser.add_argument("--render", action="store_true", help="only redraw the table, PNG and README from --out")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(Path(args.out).read_text())
        saved_levels = [int(c) for c in next(iter(saved["added"].values()))["non-stream"]]
        plot(saved, saved_levels, Path(args.out).with_suffix(".png"))
        print_table(saved, saved_levels)
        if not args.no_readme:
            update_readme(saved, saved_levels, saved)
        return
    if args.quick:
        args.rounds, args.requests = 1, 30
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [n for n in args.contenders.split(",") if n]
    if "direct" not in names:
        names.insert(0, "direct")
    scale = {1: 1, 16: 2, 64: 4}
    series = [
        {
            "mode": mode,
            "concurrency": c,
            "requests": args.requests * scale.get(c, 4),
            "warmup": max(50, 4 * c),
        }
        for mode in MODES
        for c in levels
    ]

    from tqdm import tqdm

    workdir = Path(tempfile.mkdtemp(prefix="rapport-overhead-"))
    servers: dict[str, Server] = {}
    upstream = start_fake_upstream(workdir)
    load_before = os.getloadavg()
    raw: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = {}
    try:
        servers["direct"] = Server("direct", upstream.base_url)
        for name in names:
            if name == "rapport":
                servers[name] = start_rapport(name, upstream.base_url, True, workdir)
            elif name == "rapport-httpx":
                servers[name] = start_rapport(name, upstream.base_url, True, workdir, transport="httpx")
            elif name == "rapport-litellm":
                servers[name] = start_rapport(name, upstream.base_url, False, workdir)
            elif name == "litellm-proxy":
                servers[name] = start_litellm_proxy(upstream.base_url, workdir)
        with tqdm(total=args.rounds * len(names), desc="series", unit="contender") as bar:
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for name in order:
                    bar.set_postfix_str(f"round {rnd + 1}: {name}")
                    for item in series:
                        result = run_loadgen(servers[name], upstream, item, workdir)
                        raw.setdefault(name, {}).setdefault(result["mode"], {}).setdefault(
                            result["concurrency"], []
                        ).append(result)
                    bar.update(1)
    finally:
        for server in servers.values():
            server.stop()
        upstream.stop()
    load_after = os.getloadavg()

    summary = summarize(raw)
    report = {
        "benchmark": "overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "platform": platform.platform(),
        },
        "versions": versions(),
        "setup": {
            "rounds": args.rounds,
            "series": series,
            "contenders": {
                "direct": "aiohttp client -> fake upstream",
                "rapport": "uvicorn (1 worker) bench.rapport_server:app, plugins=(), upstream.fast_path=true (aiohttp)",
                "rapport-httpx": "same, upstream.transport=httpx",
                "rapport-litellm": "same, upstream.fast_path=false (litellm.acompletion)",
                "litellm-proxy": "litellm --config (1 worker) from .venv-litellm, master key auth, no database",
            },
            "upstream": "bench/fake_upstream.py (raw asyncio + uvloop), SSE: 11 events + usage + [DONE]",
            "added": "contender percentile minus direct percentile, samples pooled over rounds",
        },
        "goals": goals(summary["added"], levels),
        **summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(summary, levels, out.with_suffix(".png"))
    print_table(summary, levels)
    print(json.dumps(report["goals"], indent=2))
    if not args.no_readme and not args.quick:
        update_readme(summary, levels, report)
    shutil.rmtree(workdir, ignore_errors=True)


README_BEGIN = "<!-- overhead-table:begin -->"
README_END = "<!-- overhead-table:end -->"


def readme_table(summary: dict[str, Any], levels: list[int], report: dict[str, Any]) -> str:
    lines = [
        README_BEGIN,
        f"Measured {report['when']} ({report['machine']['cpus']} shared CPUs, {report['setup']['rounds']} rounds; "
        "added latency = contender percentile minus direct percentile, ms; req/s = throughput at that concurrency).",
        "",
        "| contender | mode | conc | added p50 | added p95 | added p99 | stream total added p50 | req/s (direct) "
        "| server CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, modes in summary["added"].items():
        for mode in MODES:
            for c in levels:
                row = modes[mode][str(c)]
                first = row["total"] if mode == "non-stream" else row["ttfb"]
                label = "non-stream" if mode == "non-stream" else "stream TTFB"
                total = f"{row['total']['p50']:.2f}" if mode == "stream" else "-"
                lines.append(
                    f"| {name} | {label} | {c} | {first['p50']:.2f} | {first['p95']:.2f} | {first['p99']:.2f} | "
                    f"{total} | {row['rps']:.0f} ({row['direct_rps']:.0f}) | {row['server_cpu_ms_per_request']:.2f} |"
                )
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(summary: dict[str, Any], levels: list[int], report: dict[str, Any]) -> None:
    """Replace only the marked table inside README's Benchmarks section."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        print("README has no overhead-table markers; table not written")
        return
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + readme_table(summary, levels, report) + tail)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_loadgen":
        loadgen_main(sys.argv[2])
    else:
        main()
