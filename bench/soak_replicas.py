"""Soak on the shared backend: N real `rapport serve` replicas on one PostgreSQL, clients spread across them.

`python bench/soak.py --replicas 2` lands here (this module holds what the single-process soak does not need).
Two runs, each on a fresh database of the same PostgreSQL (a pgserver started here, the way the tests start
theirs, or the server of `--database-url`): one replica alone, then `--replicas` of them, each with its own
empty data dir and the same config, memory on, in front of the fake upstream (bench/fake_upstream.py). Every
request goes to the next replica in turn (round robin, as a load balancer without affinity would send them), so
one user's turns are recorded by one replica and retrieved by another.

    python bench/soak.py --replicas 2 --duration 60 --concurrency 32 --users 200

Per run: requests/s, 5xx, memory items counted in the database against the successful chats (each stores one
user turn), RSS of every replica after warm-up and at the end, and CPU per request from /proc (user + system
time of each replica, and of the PostgreSQL processes when the bench started the server), taken from the start
of the measured load until every recording of it is in the database. On 2 shared cores the point is correctness
and headroom, not linear scaling. Writes `bench/results/soak_replicas.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.soak import (
    _SEQ,
    ADMIN_KEY,
    API_KEY,
    TOPICS,
    FakeUpstreamProcess,
    RapportProcess,
    RSSSampler,
    Tally,
    _progress,
    percentile,
    rss_bytes,
    write_config,
)

TENANT = "soak"  # the tenant of the soak's static key
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- CPU time from /proc ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int, *, descend: bool = False) -> float:
    """User + system CPU seconds of a process and its live children (all descendants when `descend`), plus
    what its reaped children used (cutime/cstime)."""
    total, pending, seen = 0.0, [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            # Fields after the command name (which may hold spaces), counted from state (field 3).
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS
        children = _children(current)
        pending.extend(children if descend or current == pid else [])
    return total


# -- the shared PostgreSQL ----------------------------------------------------------------------------------


class SharedPostgres:
    """A pgserver started here (as tests/support/postgres.py does), or the server of an operator's URL; hands out
    one fresh database per run so each run's items are counted on their own."""

    def __init__(self, workdir: Path, database_url: str | None) -> None:
        self._server: Any = None
        if database_url is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
                import pgserver

                root = workdir / "pg"
                root.mkdir(parents=True)
                for folder in (workdir, root):
                    folder.chmod(0o755)  # pgserver runs the server as its own user when started as root
                self._server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
            database_url = str(self._server.get_uri("postgres"))
        self.admin_url = database_url
        self._admin = sa.create_engine(
            database_url.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )

    @property
    def started_here(self) -> bool:
        return self._server is not None

    def postmaster_pid(self) -> int | None:
        if self._server is None:
            return None
        return int((Path(self._server.pgdata) / "postmaster.pid").read_text().split()[0])

    def create_database(self) -> str:
        name = f"soak_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return sa.engine.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        name = sa.engine.make_url(url).database
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self._admin.dispose()
        if self._server is not None:
            self._server.cleanup()


class ItemCounter:
    """Memory items of the soak's tenant, counted in the database itself (not through a replica's API)."""

    def __init__(self, url: str) -> None:
        from memory.pg_store import TABLE

        self._engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.pool.NullPool)
        self._query = sa.text(f"SELECT count(*) FROM {TABLE} WHERE tenant = :tenant")

    def __call__(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(self._query, {"tenant": TENANT}).scalar_one())

    def wait_for(self, expected: int, timeout: float = 600.0, settle: float = 60.0) -> int:
        """Recording happens after each response: poll until the count reaches `expected`, or stops moving for
        `settle` seconds (a loss), or `timeout` passes; then once more, so a duplicate still in flight shows.
        The settle is long: items land in batches, and on an overloaded machine one replica's backlog moved the
        count in steps of a few hundred with 15 s and more between them."""
        deadline = time.monotonic() + timeout
        seen, moved = self(), time.monotonic()
        while seen < expected and time.monotonic() < deadline and time.monotonic() - moved < settle:
            time.sleep(0.5)
            now = self()
            if now != seen:
                seen, moved = now, time.monotonic()
        time.sleep(1.0)
        return self()

    def close(self) -> None:
        self._engine.dispose()


# -- load spread over the replicas --------------------------------------------------------------------------


@dataclass
class Spread:
    """Round robin over the replicas' URLs, and the statuses each replica answered."""

    urls: list[str]

    def __post_init__(self) -> None:
        self._next = itertools.cycle(range(len(self.urls)))
        self.statuses: list[Counter[int]] = [Counter() for _ in self.urls]

    def pick(self) -> int:
        return next(self._next)


async def _chat(
    client: httpx.AsyncClient, spread: Spread, tally: Tally, user: str, text: str, stream: bool
) -> None:
    replica = spread.pick()
    started = time.perf_counter()
    try:
        response = await client.post(
            f"{spread.urls[replica]}/v1/chat/completions",
            headers={"authorization": f"Bearer {API_KEY}", "x-rapport-user": user},
            json={"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream},
        )
        await response.aread()
    except httpx.HTTPError as exc:
        tally.transport_error(exc, "stream" if stream else "chat", started)
        return
    tally.latencies_ms.append((time.perf_counter() - started) * 1000.0)
    tally.statuses[response.status_code] += 1
    spread.statuses[replica][response.status_code] += 1
    if response.status_code == 200 and b'"error"' not in response.content[-400:]:
        tally.ok_chats += 1


async def touch(spread: Spread, concurrency: int, users: int) -> Tally:
    """One chat for every user before anything is measured."""
    tally = Tally(phase="touch")
    pending = iter(range(users))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for index in pending:
            await _chat(client, spread, tally, f"user-{index}", f"Hello, I am user {index}; turn {next(_SEQ)}.", False)

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(min(concurrency, users))))
    return tally


async def spread_load(spread: Spread, concurrency: int, users: int, seconds: float, phase: str) -> Tally:
    tally = Tally(phase=phase)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    stop_at = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient, w: int) -> None:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            topic = TOPICS[(w + n) % len(TOPICS)]
            # A unique text per request: the memory store drops exact duplicates for a user, by design.
            text = f"I enjoy {topic}; soak turn {next(_SEQ)}. Any tips?"
            await _chat(client, spread, tally, f"user-{(w * 7919 + n) % users}", text, n % 4 == 0)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        ticker = asyncio.create_task(_progress(tally, seconds, stop_at))
        await asyncio.gather(*(worker(client, w) for w in range(concurrency)))
        ticker.cancel()
    return tally


def recordings_lost(url: str) -> float:
    """`rapport_recordings_lost_total` of one replica, all stages."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rapport_recordings_lost_total"
    )


# -- one run ------------------------------------------------------------------------------------------------


def _cpu_of(replicas: list[RapportProcess], postgres: Callable[[], float] | None) -> tuple[list[float], float | None]:
    return [cpu_seconds(r.pid) for r in replicas], (postgres() if postgres is not None else None)


def run_replicas(
    count: int,
    *,
    pg: SharedPostgres,
    upstream: FakeUpstreamProcess,
    workdir: Path,
    duration: float,
    concurrency: int,
    users: int,
    warmup: float,
) -> dict[str, Any]:
    url = pg.create_database()
    counter = ItemCounter(url)
    replicas: list[RapportProcess] = []
    postmaster = pg.postmaster_pid()
    postgres_cpu = (lambda: cpu_seconds(postmaster, descend=True)) if postmaster is not None else None
    try:
        for index in range(count):
            data_dir = workdir / f"run{count}-replica{index}" / "data"
            data_dir.parent.mkdir(parents=True)
            config = write_config(data_dir, upstream.base_url, database_url=url)
            # One at a time: replicas starting together would only wait on each other's migration lock.
            replicas.append(RapportProcess(config, data_dir.parent / "server.log").start())
        spread = Spread([r.url for r in replicas])
        rss_ready = [rss_bytes(r.pid) for r in replicas]
        touched = asyncio.run(touch(spread, concurrency, users))
        counter.wait_for(touched.ok_chats)
        warm = asyncio.run(spread_load(spread, concurrency, users, warmup, "warm-up"))
        counter.wait_for(touched.ok_chats + warm.ok_chats)
        spread.statuses = [Counter() for _ in replicas]  # per replica: the measured window only
        rss_start = [rss_bytes(r.pid) for r in replicas]
        load_before = os.getloadavg()
        cpu_start, pg_start = _cpu_of(replicas, postgres_cpu)
        started = time.monotonic()
        samplers = [RSSSampler(r.pid) for r in replicas]
        with ExitStack() as sampling:
            for sampler in samplers:
                sampling.enter_context(sampler)
            tally = asyncio.run(spread_load(spread, concurrency, users, duration, "load"))
        elapsed = time.monotonic() - started
        rss_end = [rss_bytes(r.pid) for r in replicas]
        cpu_load, pg_load = _cpu_of(replicas, postgres_cpu)
        expected = touched.ok_chats + warm.ok_chats + tally.ok_chats
        written = counter.wait_for(expected)
        drained_s = time.monotonic() - started - elapsed
        cpu_end, pg_end = _cpu_of(replicas, postgres_cpu)
        lost = [recordings_lost(r.url) for r in replicas]
        load_after = os.getloadavg()
    finally:
        for replica in replicas:
            replica.stop()
        counter.close()
        pg.drop_database(url)
    served = sum(tally.statuses.values())
    errors = touched.transport_errors + warm.transport_errors + tally.transport_errors
    replica_cpu = sum(cpu_end) - sum(cpu_start)
    per_replica = [
        {
            "statuses": {str(k): v for k, v in sorted(spread.statuses[i].items())},
            "rss_ready_mb": round(rss_ready[i] / 2**20, 1),
            "rss_start_mb": round(rss_start[i] / 2**20, 1),
            "rss_end_mb": round(rss_end[i] / 2**20, 1),
            "rss_growth_pct": round(100.0 * (rss_end[i] - rss_start[i]) / rss_start[i], 1),
            "rss_samples_mb": samplers[i].samples,
            "cpu_s_load": round(cpu_load[i] - cpu_start[i], 2),
            "cpu_s_until_drained": round(cpu_end[i] - cpu_start[i], 2),
        }
        for i in range(count)
    ]
    result: dict[str, Any] = {
        "replicas": count,
        "duration_s": round(elapsed, 1),
        "requests_served": served,
        "throughput_rps": round(served / elapsed, 1) if elapsed else 0.0,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors_5xx": sum(n for status, n in tally.statuses.items() if status >= 500),
        "warmup_errors_5xx": sum(n for status, n in (touched.statuses + warm.statuses).items() if status >= 500),
        "transport_errors": len(errors),
        "transport_error_kinds": dict(Counter(str(error["kind"]) for error in errors)),
        "items_expected": expected,
        "items_written": written,
        # Recording runs after each response: how long after the load the last of its items was in the database
        # (includes the final one-second look for duplicates), and what the replicas counted as lost.
        "drain_s": round(drained_s, 1),
        "recordings_lost": sum(lost),
        "latency_ms": {
            "p50": round(percentile(tally.latencies_ms, 50), 1),
            "p95": round(percentile(tally.latencies_ms, 95), 1),
            "p99": round(percentile(tally.latencies_ms, 99), 1),
        },
        "rss_growth_pct_max": max(
            round(100.0 * (end - start) / start, 1) for start, end in zip(rss_start, rss_end, strict=True)
        ),
        # From the start of the measured load until its last recording is in the database: recording runs after
        # each response, so CPU spent on it after the window belongs to the window's requests.
        "replica_cpu_ms_per_request": round(1000.0 * replica_cpu / served, 2) if served else None,
        "postgres_cpu_ms_per_request": (
            round(1000.0 * (pg_end - pg_start) / served, 2) if served and pg_end is not None and pg_start is not None
            else None
        ),
        "cpu_ms_per_request_during_load": round(1000.0 * (sum(cpu_load) - sum(cpu_start)) / served, 2) if served else None,
        "postgres_cpu_s_load": round(pg_load - pg_start, 2) if pg_load is not None and pg_start is not None else None,
        "per_replica": per_replica,
        "users_touched": touched.ok_chats,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    return result


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rapport-soak-replicas-"))
    pg = SharedPostgres(workdir, args.database_url)
    upstream = FakeUpstreamProcess()
    runs: list[dict[str, Any]] = []
    try:
        for count in dict.fromkeys((1, args.replicas)):
            print(f"soak: {count} replica(s), concurrency {args.concurrency}, {args.duration:g}s ...", flush=True)
            runs.append(
                run_replicas(
                    count, pg=pg, upstream=upstream, workdir=workdir, duration=args.duration,
                    concurrency=args.concurrency, users=args.users, warmup=args.warmup,
                )
            )
    finally:
        upstream.stop()
        pg.stop()
    one, many = runs[0], runs[-1]
    return {
        "config": {
            "replicas": args.replicas,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "users": args.users,
            "routing": "round robin per request",
            "memory": "on (summary_every 25)",
            "postgres": "pgserver started by the bench" if pg.started_here else "external (--database-url)",
            "cpus": os.cpu_count(),
        },
        "runs": runs,
        "throughput_ratio": round(many["throughput_rps"] / one["throughput_rps"], 2) if one["throughput_rps"] else None,
        "ok": all(
            r["errors_5xx"] == 0 and r["items_written"] == r["items_expected"] and r["rss_growth_pct_max"] < 10.0
            for r in runs
        ),
    }


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    cfg = result["config"]
    table = Table(title=f"Rapport soak on PostgreSQL: concurrency {cfg['concurrency']}, {cfg['duration_s']:g} s, memory on")
    table.add_column("measure")
    for run in result["runs"]:
        table.add_column(f"{run['replicas']} replica(s)", justify="right")
    table.add_column("goal")

    def row(name: str, cell: Callable[[dict[str, Any]], str], goal: str = "") -> None:
        table.add_row(name, *(cell(r) for r in result["runs"]), goal)

    row("requests/s", lambda r: f"{r['throughput_rps']} ({r['requests_served']})")
    row("5xx (load / warm-up)", lambda r: f"{r['errors_5xx']} / {r['warmup_errors_5xx']}", "0")
    row("transport errors", lambda r: str(r["transport_errors"]), "0")
    row("items written / expected", lambda r: f"{r['items_written']} / {r['items_expected']}", "equal")
    row("drained after load (s) / lost", lambda r: f"{r['drain_s']} / {r['recordings_lost']:g}")
    row("latency p50 / p95 (ms)", lambda r: f"{r['latency_ms']['p50']} / {r['latency_ms']['p95']}")
    row("RSS per replica warm -> end (MB)",
        lambda r: ", ".join(f"{p['rss_start_mb']:.0f}->{p['rss_end_mb']:.0f}" for p in r["per_replica"]))
    row("RSS growth, worst replica", lambda r: f"{r['rss_growth_pct_max']}%", "< 10%")
    row("replica CPU ms / request", lambda r: str(r["replica_cpu_ms_per_request"]))
    row("PostgreSQL CPU ms / request", lambda r: str(r["postgres_cpu_ms_per_request"]))
    row("load average before -> after", lambda r: f"{r['loadavg_before'][0]} -> {r['loadavg_after'][0]}")
    Console().print(table)
    print(f"throughput {result['runs'][-1]['replicas']} replicas / 1: {result['throughput_ratio']}x; ok: {result['ok']}")


def main(args: argparse.Namespace) -> None:
    """Called by bench/soak.py with its parsed arguments when --replicas is given."""
    result = run_all(args)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"wrote {out}")
