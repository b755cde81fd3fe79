"""RSS of one `rapport serve` replica as it serves many distinct users once each (issue 12, "Measured").

One real `rapport serve` process with memory on, in front of the fake upstream (bench/fake_upstream.py);
every user sends one chat (its exchange is recorded) and every `--retrieve-every`th user a second one that
retrieves it. The server's RSS is sampled against users served, for the embedded default (SQLite + embedded
Chroma, whose open collections are bounded by `memory.max_open_collections`) and for the shared backend
(PostgreSQL + pgvector through `database_url`: a pgserver started here, or `--database-url`).

    python -m bench.replica_rss                      # 10k users, both backends
    python -m bench.replica_rss --users 1000 --backends embedded

Prints a table, writes bench/results/replica_rss.json and a plot of RSS against users served
(bench/results/replica_rss.png). Goal (issue 12): under 1.5 GB on PostgreSQL after 10k users.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.soak import API_KEY, FakeUpstreamProcess, RapportProcess, rss_bytes, write_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MB = 2**20


class Progress:
    """Users served so far, shared by the client tasks and the RSS sampler."""

    def __init__(self) -> None:
        self.users = 0
        self.statuses: dict[int, int] = {}
        self.errors = 0


def sample_rss(pid: int, progress: Progress, stop: threading.Event, samples: list[dict[str, float]]) -> None:
    started = time.monotonic()
    while not stop.is_set():
        samples.append(
            {"t_s": round(time.monotonic() - started, 1), "users": progress.users, "rss_mb": round(rss_bytes(pid) / MB, 1)}
        )
        stop.wait(2.0)


async def serve_users(url: str, users: int, concurrency: int, retrieve_every: int, progress: Progress) -> None:
    from tqdm import tqdm

    pending = iter(range(users))
    headers = {"authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    bar = tqdm(total=users, unit="user", desc="users", leave=False)

    async def chat(client: httpx.AsyncClient, user: str, text: str) -> None:
        try:
            response = await client.post(
                f"{url}/v1/chat/completions",
                headers={**headers, "x-rapport-user": user},
                json={"model": "m", "messages": [{"role": "user", "content": text}]},
            )
            progress.statuses[response.status_code] = progress.statuses.get(response.status_code, 0) + 1
        except httpx.HTTPError:
            progress.errors += 1

    async def worker(client: httpx.AsyncClient) -> None:
        for index in pending:
            user = f"user-{index:05d}"
            await chat(client, user, f"I am {user}; I keep bees and I am allergic to peanuts ({index}).")
            if retrieve_every and index % retrieve_every == 0:
                await chat(client, user, "What snack should I bring to the apiary?")
            progress.users += 1
            bar.update(1)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    bar.close()


def run_backend(name: str, args: argparse.Namespace, workdir: Path, database_url: str | None) -> dict[str, Any]:
    upstream = FakeUpstreamProcess()
    sections: dict[str, Any] = {"database_url": database_url} if database_url else {}
    memory: dict[str, Any] = {"summaries": False}
    if args.max_open_collections is not None:
        memory["max_open_collections"] = args.max_open_collections
    config = write_config(workdir / f"data-{name}", upstream.base_url, memory=memory, **sections)
    server = RapportProcess(config, workdir / f"server-{name}.log")
    samples: list[dict[str, float]] = []
    progress = Progress()
    stop = threading.Event()
    try:
        server.start()
        rss_ready = rss_bytes(server.pid) / MB
        sampler = threading.Thread(target=sample_rss, args=(server.pid, progress, stop, samples), daemon=True)
        sampler.start()
        started = time.monotonic()
        asyncio.run(serve_users(server.url, args.users, args.concurrency, args.retrieve_every, progress))
        elapsed = time.monotonic() - started
        time.sleep(args.settle_s)  # let the recordings after the last responses land
        stop.set()
        sampler.join()
        rss_end = rss_bytes(server.pid) / MB
    finally:
        stop.set()
        server.stop()
        upstream.stop()
    peak = max([s["rss_mb"] for s in samples] + [rss_end])
    ok = progress.statuses.get(200, 0)
    return {
        "backend": name,
        "users": args.users,
        "requests_ok": ok,
        "non_200": {str(k): v for k, v in progress.statuses.items() if k != 200},
        "transport_errors": progress.errors,
        "seconds": round(elapsed, 1),
        "rss_ready_mb": round(rss_ready, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_growth_mb": round(rss_end - rss_ready, 1),
        "samples": samples,
    }


def start_postgres(workdir: Path) -> tuple[Any, str]:
    import pgserver

    root = workdir / "pg"
    root.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    root.chmod(0o755)  # pgserver runs the server as its own user when started as root
    server: Any = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    return server, str(server.get_uri("postgres"))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        ax.plot([s["users"] for s in row["samples"]], [s["rss_mb"] for s in row["samples"]], label=row["backend"])
    ax.axhline(1536, color="grey", linestyle="--", linewidth=1, label="goal 1.5 GB")
    ax.set_xlabel("distinct users served")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("One rapport serve replica, memory on")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--retrieve-every", type=int, default=10, help="every Nth user sends a second chat")
    parser.add_argument("--backends", default="embedded,postgres")
    parser.add_argument("--database-url", default=None, help="an existing PostgreSQL with pgvector")
    parser.add_argument("--max-open-collections", type=int, default=None, help="None: the shipped default")
    parser.add_argument("--settle-s", type=float, default=8.0)
    parser.add_argument("--out", default=str(RESULTS / "replica_rss.json"))
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from memory.config import MemorySettings

    workdir = Path(tempfile.mkdtemp(prefix="rapport-replica-rss-"))
    rows: list[dict[str, Any]] = []
    pg_server: Any = None
    try:
        for backend in args.backends.split(","):
            url = None
            if backend == "postgres":
                url = args.database_url
                if url is None:
                    pg_server, url = start_postgres(workdir)
            rows.append(run_backend(backend, args, workdir, url))
    finally:
        if pg_server is not None:
            pg_server.cleanup()

    table = Table(title=f"RSS of one replica after {args.users} distinct users")
    for col in ("backend", "ok", "non-200", "s", "RSS ready MB", "RSS end MB", "peak MB", "growth MB"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["backend"], str(r["requests_ok"]), json.dumps(r["non_200"]), str(r["seconds"]),
            str(r["rss_ready_mb"]), str(r["rss_end_mb"]), str(r["rss_peak_mb"]), str(r["rss_growth_mb"]),
        )
    Console().print(table)
    result = {
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "database_url")},
            "max_open_collections_effective": args.max_open_collections or MemorySettings().max_open_collections,
            "external_database": args.database_url is not None,
            "cpus": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
