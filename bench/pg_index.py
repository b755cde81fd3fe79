"""Which vector index layout keeps a user's top-k query in PostgreSQL + pgvector fast AND right.

    .venv/bin/python -m bench.pg_index [--users 1000] [--per-user 100] [--big 100000] [--queries 200] [--ingest N]
        [--global-hnsw] [--ef 40,100,200,400]

Data (random, seeded): every ordinary user holds `--per-user` items drawn around 5 topic centres of their own;
one big user holds `--big` items around all 200; the centres are one pool
all users share; "ladder" users of 2k/10k/30k items time the exact scan as a
user grows (that is what sets the store's index threshold). Vectors are unit-length 384-d, like the embedding
model's; random vectors are fine for the latency and recall of an index, not for retrieval quality. Queries are
a stored item of the user plus noise of the same size as an item's spread around its centre (a relevant item
is near), and, for the big user, also pure random directions (the worst case for HNSW: nothing is near).
Rows are loaded with binary COPY. Every latency is one query of the real `PgVectorStore.query` (connection from
the pool, rows parsed), except the global-index layout, which the store does not have (raw SQL).

Layouts:
- exact: the primary key's btree on (tenant, user_id, id) finds the user's rows, all are scored (the store's
  path below its threshold);
- global HNSW: one HNSW index over every ordinary row, queried with `WHERE tenant AND user_id` (pgvector 0.6
  filters after the index scan);
- partial HNSW: one index over the big user's rows only (the store's path past its threshold), per ef_search.
Recall@k is against the exact top-k computed with numpy. `--ingest N` also times `PgVectorStore.add` of N items
(one exchange a call, 1 and 64 writers; store only, no embedding). Each run is kept in
bench/results/pg_index.json under its data shape.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench._common import RESULTS, percentiles
from memory.pg_store import TABLE, PgVectorStore
from rapport.core.database import Database

console = Console()
DIM = 384
K = 10
TOPICS = 200  # topic centres shared by all users
SPREAD = 0.05  # per-dimension noise around a topic centre: an item's cosine to its centre is about 0.7
Array = np.ndarray[Any, np.dtype[np.float32]]


def unit(rows: Array) -> Array:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def user_vectors(rng: np.random.Generator, pool: Array, n: int, topics: int) -> Array:
    """Items of one user around `topics` centres drawn from a pool every user shares (people talk about the
    same things: another user's items are as near a query as one's own, which a global index must filter)."""
    centres = pool[rng.choice(len(pool), size=min(topics, len(pool)), replace=False)]
    picks = rng.integers(0, len(centres), n)
    return unit(centres[picks] + SPREAD * rng.standard_normal((n, DIM)).astype(np.float32))


def near_queries(rng: np.random.Generator, stored: Array, n: int) -> Array:
    rows = stored[rng.integers(0, len(stored), n)]
    return unit(rows + SPREAD * rng.standard_normal(rows.shape).astype(np.float32))


# -- loading ------------------------------------------------------------------------------------------------

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_VEC_HEAD = struct.pack(">hh", DIM, 0)


def _field(value: bytes | None) -> bytes:
    return struct.pack(">i", -1) if value is None else struct.pack(">i", len(value)) + value


def copy_rows(db: Database, parts: list[tuple[str, Array, int]], tenant: str = "t") -> None:
    """One binary COPY of several users' rows: (user, vectors, index of the first row); columns as the store
    writes them, ids f"{user}-{i}"."""
    out = io.BytesIO()
    out.write(_HEADER)
    t, role, source = tenant.encode(), b"user", b"bench"
    for user, vecs, offset in parts:
        big_endian = vecs.astype(">f4")
        u = user.encode()
        for j in range(len(vecs)):
            i = offset + j
            out.write(struct.pack(">h", 11))
            for value in (t, u, f"{user}-{i}".encode(), f"item {i} of {user}".encode(), role):
                out.write(_field(value))
            out.write(_field(struct.pack(">d", float(i))))
            out.write(_field(None) * 3)
            out.write(_field(source))
            out.write(_field(_VEC_HEAD + big_endian[j].tobytes()))
    out.write(struct.pack(">h", -1))
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = "tenant, user_id, id, text, role, ts, conversation_id, model, task, source, embedding"
        with cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(out.getvalue())
        raw.commit()
    finally:
        raw.close()


# -- measuring ----------------------------------------------------------------------------------------------


def recall(found: list[list[str]], exact: list[list[str]]) -> float:
    hits = sum(len(set(f) & set(e)) for f, e in zip(found, exact, strict=True))
    return round(hits / sum(len(e) for e in exact), 4)


def exact_ids(user: str, vecs: Array, queries: Array) -> list[list[str]]:
    order = np.argsort(-(queries @ vecs.T), axis=1)[:, :K]
    return [[f"{user}-{i}" for i in row] for row in order]


def time_store(
    store: PgVectorStore, targets: list[tuple[str, Array]]
) -> tuple[dict[str, float], list[list[str]]]:
    samples: list[float] = []
    found: list[list[str]] = []
    for user, q in targets:
        start = time.perf_counter()
        hits = store.query("t", user, q, K)
        samples.append((time.perf_counter() - start) * 1000)
        found.append([h.item.id for h in hits])
    return percentiles(samples), found


def time_global(
    db: Database, targets: list[tuple[str, Array]], ef: int
) -> tuple[dict[str, float], list[list[str]]]:
    samples: list[float] = []
    found: list[list[str]] = []
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"SET hnsw.ef_search = {ef}")
        # Measure the index itself: with few rows a user, the planner prefers a sequential scan of the whole
        # table (exact, and slower than the btree layout), which would say nothing about the index.
        cursor.execute("SET enable_seqscan = off")
        for user, q in targets:
            literal = "[" + ",".join(format(float(x), ".9g") for x in q) + "]"
            start = time.perf_counter()
            cursor.execute(
                f"SELECT id FROM bench_global WHERE tenant = 't' AND user_id = %s "
                f"ORDER BY (embedding::vector({DIM})) <=> %s::vector({DIM}) LIMIT {K}",
                (user, literal),
            )
            rows = cursor.fetchall()
            samples.append((time.perf_counter() - start) * 1000)
            found.append([str(r[0]) for r in rows])
        raw.rollback()
    finally:
        raw.close()
    return percentiles(samples), found


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def sql(db: Database, statement: str) -> float:
    start = time.perf_counter()
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(statement)
    return round(time.perf_counter() - start, 2)


def ingest(db: Database, rng: np.random.Generator, pool: Array, writers: int, total: int) -> dict[str, Any]:
    """Items/s through `PgVectorStore.add`: one exchange (2 items) of one new user a call, `writers` calls in
    flight from threads (as the service's write path calls it); the partial-index check included."""
    from concurrent.futures import ThreadPoolExecutor

    from memory.items import MemoryItem

    store = PgVectorStore(db, DIM)
    vecs = user_vectors(rng, pool, total, topics=20)
    calls = [
        (
            [
                MemoryItem("t", f"w{writers}-{i // 20}", f"turn {i} of writer {writers}"),
                MemoryItem("t", f"w{writers}-{i // 20}", f"reply {i} of writer {writers}", role="assistant"),
            ],
            vecs[i : i + 2],
        )
        for i in range(0, total - 1, 2)
    ]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as executor:
        stored = sum(len(n) for n in executor.map(lambda c: store.add(*c), calls))
    seconds = time.perf_counter() - start
    return {"writers": writers, "items": stored, "items_per_s": round(stored / seconds, 1)}


def merge_run(path: Path, label: str, result: dict[str, Any]) -> None:
    """Keep one entry per data shape in the results file, so runs at several scales sit side by side."""
    runs: dict[str, Any] = json.loads(path.read_text()).get("runs", {}) if path.exists() else {}
    runs[label] = result
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--ladder", default="2000,10000,30000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="40,100,200,400")
    parser.add_argument(
        "--global-hnsw", action="store_true", help="also build and time one global HNSW index"
    )
    parser.add_argument("--global-ef", default="40,400,1000", help="ef_search values for the global index")
    parser.add_argument(
        "--ingest", type=int, default=0, help="also time PgVectorStore.add of this many items"
    )
    parser.add_argument("--out", default=str(RESULTS / "pg_index.json"))
    args = parser.parse_args()

    import pgserver

    rng = np.random.default_rng(7)
    root = Path(tempfile.mkdtemp(prefix="pg-index-", dir="/tmp"))
    root.chmod(0o755)  # pgserver runs the server as its own user when started as root
    server: Any = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    db = Database.postgres(server.get_uri("postgres"), pool_size=2, max_overflow=0)
    result: dict[str, Any] = {
        "config": {
            # Where the results went is this machine's business, not the result's.
            **{k: v for k, v in vars(args).items() if k != "out"},
            "dim": DIM,
            "k": K,
            "postgres": db.ping(),
            "vectors": "random, clustered",
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    try:
        sql(db, "ALTER SYSTEM SET maintenance_work_mem = '1GB'")
        sql(db, "SELECT pg_reload_conf()")
        store = PgVectorStore(
            db, DIM, index_threshold=0
        )  # no automatic builds: the bench builds what it times
        start = time.perf_counter()
        pool = unit(rng.standard_normal((TOPICS, DIM)).astype(np.float32))
        ordinary: dict[str, Array] = {}
        for n in range(args.users):
            user = f"u{n}"
            ordinary[user] = user_vectors(rng, pool, args.per_user, topics=5)
        # Interleave users in COPY chunks so one user's rows are spread over the heap, as a live table's are.
        order = list(ordinary)
        for lo in range(0, args.per_user, 25):
            copy_rows(db, [(user, ordinary[user][lo : lo + 25], lo) for user in order])
        ladder = {
            f"ladder{size}": user_vectors(rng, pool, size, topics=50)
            for size in map(int, args.ladder.split(","))
        }
        for user, vecs in ladder.items():
            copy_rows(db, [(user, vecs, 0)])
        big = user_vectors(rng, pool, args.big, topics=200)
        for lo in range(0, args.big, 20_000):
            copy_rows(db, [("big", big[lo : lo + 20_000], lo)])
        sql(db, f"VACUUM ANALYZE {TABLE}")
        rows = args.users * args.per_user + sum(len(v) for v in ladder.values()) + args.big
        result["load"] = {"rows": rows, "seconds": round(time.perf_counter() - start, 1)}
        console.print(f"loaded {rows} rows in {result['load']['seconds']} s")

        users = [order[int(i)] for i in rng.integers(0, len(order), args.queries)]
        targets = [(u, near_queries(rng, ordinary[u], 1)[0]) for u in users]
        truth = [exact_ids(u, ordinary[u], q[None, :])[0] for u, q in targets]
        stats, found = time_store(store, targets)
        layouts: list[dict[str, Any]] = [
            {
                "layout": "exact (btree on tenant, user_id)",
                "user_rows": args.per_user,
                **stats,
                "recall": recall(found, truth),
            }
        ]
        for user, vecs in ladder.items():
            qs = near_queries(rng, vecs, 50)
            stats, found = time_store(store, [(user, q) for q in qs])
            layouts.append(
                {
                    "layout": "exact (btree on tenant, user_id)",
                    "user_rows": len(vecs),
                    **stats,
                    "recall": recall(found, exact_ids(user, vecs, qs)),
                }
            )
        # Memory per user must not be resident: one query for each of up to 10k distinct users, RSS before/after.
        distinct = order[: min(len(order), 10_000)]
        before = rss_mb()
        time_store(store, [(u, ordinary[u][0]) for u in distinct])
        result["rss"] = {"distinct_users_queried": len(distinct), "before_mb": before, "after_mb": rss_mb()}
        big_near = near_queries(rng, big, args.queries)
        big_random = unit(rng.standard_normal((args.queries, DIM)).astype(np.float32))
        big_truth = {"near": exact_ids("big", big, big_near), "random": exact_ids("big", big, big_random)}
        stats, found = time_store(store, [("big", q) for q in big_near[:50]])
        layouts.append(
            {
                "layout": "exact (btree on tenant, user_id)",
                "user_rows": args.big,
                "queries": "near",
                **stats,
                "recall": recall(found, big_truth["near"][:50]),
            }
        )

        start = time.perf_counter()
        store.build_index("t", "big")
        seconds = round(time.perf_counter() - start, 1)
        sql(db, f"ANALYZE {TABLE}")
        for ef in map(int, args.ef.split(",")):
            store.ef_search = ef
            for kind, qs in (("near", big_near), ("random", big_random)):
                stats, found = time_store(store, [("big", q) for q in qs])
                layouts.append(
                    {
                        "layout": "partial HNSW (big user only)",
                        "user_rows": args.big,
                        "ef_search": ef,
                        "queries": kind,
                        "build_s": seconds,
                        **stats,
                        "recall": recall(found, big_truth[kind]),
                    }
                )

        if args.global_hnsw:
            sql(db, f"CREATE TABLE bench_global AS SELECT * FROM {TABLE} WHERE user_id ~ '^u[0-9]+$'")
            build = sql(
                db, f"CREATE INDEX ON bench_global USING hnsw ((embedding::vector({DIM})) vector_cosine_ops)"
            )
            sql(db, "ANALYZE bench_global")
            for ef in map(int, args.global_ef.split(",")):
                stats, found = time_global(db, targets, ef)
                layouts.append(
                    {
                        "layout": "global HNSW + WHERE filter",
                        "user_rows": args.per_user,
                        "ef_search": ef,
                        "build_s": build,
                        **stats,
                        "recall": recall(found, truth),
                    }
                )
        result["layouts"] = layouts
        if args.ingest:
            # The server's default pool (5 + 5 overflow): 64 writers share 10 connections, as in a replica.
            writer_db = Database.postgres(server.get_uri("postgres"))
            try:
                result["ingest"] = [ingest(writer_db, rng, pool, writers, args.ingest) for writers in (1, 64)]
            finally:
                writer_db.close()
    finally:
        db.close()
        server.cleanup()

    table = Table(title=f"top-{K} per user, {result['load']['rows']} rows")
    for col in ("layout", "user rows", "ef_search", "queries", "p50 ms", "p95 ms", "recall@10"):
        table.add_column(col)
    for row in result["layouts"]:
        table.add_row(
            row["layout"],
            str(row["user_rows"]),
            str(row.get("ef_search", "-")),
            row.get("queries", "near"),
            str(row["p50_ms"]),
            str(row["p95_ms"]),
            str(row["recall"]),
        )
    console.print(table)
    label = f"{args.users} users x {args.per_user} + big user {args.big}"
    merge_run(Path(args.out), label, result)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
