"""What the forget-generation check (memory/generations.py) costs a write, on a real PostgreSQL and on SQLite.

Per write, measured with and without the check (interleaved call by call), p50/p95 over `--n` calls:
- the item commit of one recorded exchange (2 items, PgVectorStore.add; the check runs inside its transaction);
- the catalog touch of that exchange's user (Catalog.touch_many);
- the read a request makes when it starts (ForgetGenerations.current).
Users are drawn from `--users` so that rows exist as they would in production (one generation row per user).

Usage: .venv/bin/python -m bench.forget_generation [--n 400] [--users 1000]; writes bench/results/forget_generation.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from memory.catalog import Catalog
from memory.items import MemoryItem
from memory.pg_store import PgVectorStore
from rapport.core.database import Database

DIM = 384
RESULTS = Path(__file__).parent / "results" / "forget_generation.json"


def _summary(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3), "p95_ms": round(samples[int(len(samples) * 0.95)], 3)}


def timed(fn: Callable[[int], object], n: int) -> dict[str, float]:
    return paired({"": fn}, n)[""]


def paired(fns: dict[str, Callable[[int], object]], n: int) -> dict[str, dict[str, float]]:
    """The variants interleaved call by call, so that load from elsewhere on the box hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(n):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn(i)
            samples[name].append((time.perf_counter() - started) * 1000.0)
    return {name: _summary(values) for name, values in samples.items()}


def bench(db: Database, n: int, n_users: int, rng: random.Random) -> dict[str, Any]:
    catalog = Catalog(db)
    gens = catalog.generations
    keys = [("t", f"user-{i}") for i in range(n_users)]
    out: dict[str, Any] = {}
    with db.write() as conn:  # steady state: every user has its generation row (made by its first write)
        gens.locked(conn, keys)
    if db.is_postgres:
        store = PgVectorStore(db, DIM, build_in_background=False)

        def add(i: int, guarded: bool) -> None:
            key = rng.choice(keys)
            items = [MemoryItem(*key, f"{tag} {i} {rng.random()}", role) for tag, role in
                     (("q", "user"), ("a", "assistant"))]  # fmt: skip
            vectors = np.random.default_rng(i).standard_normal((2, DIM)).astype(np.float32)
            admit = (lambda conn: [gens.locked(conn, [key])[key] == 0] * 2) if guarded else None
            store.add(items, vectors, admit=admit)

        add(0, True)  # warm the pool
        out.update(paired({"item_commit_plain": lambda i: add(i, False), "item_commit_checked": lambda i: add(i, True)}, n))
    out.update(
        paired(
            {
                "catalog_touch_plain": lambda i: catalog.touch_many({rng.choice(keys): 1}),
                "catalog_touch_checked": lambda i: catalog.touch_many(
                    {(key := rng.choice(keys)): 1}, generations={key: 0}
                ),
            },
            n,
        )
    )
    out["request_start_read"] = timed(lambda i: gens.current(*rng.choice(keys)), n)
    catalog.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(7)
    import pgserver

    results: dict[str, Any] = {"n": args.n, "users": args.users}
    with tempfile.TemporaryDirectory(prefix="rapport-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # pgserver runs the server as its own user when started as root
        server: Any = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
        try:
            db = Database.postgres(str(server.get_uri("postgres")))
            results["postgresql"] = bench(db, args.n, args.users, rng)
            db.close()
        finally:
            server.cleanup()
        sqlite = Database.sqlite(root / "catalog.sqlite3")
        results["sqlite"] = bench(sqlite, args.n, args.users, rng)
        sqlite.close()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
