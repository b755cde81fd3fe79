"""What feedback costs: remembering an issued response (the write after each RPM-conditioned answer, off the
request path but inside the recording the user's next request may wait for) and applying a feedback, on SQLite
and on a real PostgreSQL.

- remember, fresh user: the upsert, the per-user cap trim and the retention purge of one write;
- remember, user at the cap (`--cap` rows already): the same write when the trim deletes one row each time;
- apply: a feedback that replaces an earlier one (delete its entry, insert one, mark the issued row);
- generation read: the one read RPM adds at request start (run beside conditioning, so it adds to the
  request only where it is slower than conditioning's own reads).
p50/p95 over `--n` calls each.

Usage: .venv/bin/python -m bench.rpm_feedback [--n 400] [--cap 1000]; writes bench/results/rpm_feedback.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rapport.core.database import Database
from reasoning.rpm.feedback_store import FeedbackStore
from reasoning.rpm.store import RPMStore

RESULTS = Path(__file__).parent / "results" / "rpm_feedback.json"
QUERY = "Suggest a restaurant for dinner with my family tonight, somewhere we can walk to."
ANSWER = "Try Green Leaf: vegan, ten minutes on foot, and they have a children's menu. " * 4


def timed(fn: Callable[[int], object], n: int) -> dict[str, float]:
    samples: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - started) * 1000.0)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3), "p95_ms": round(samples[int(len(samples) * 0.95)], 3)}


def bench(db: Database, n: int, cap: int) -> dict[str, Any]:
    store = FeedbackStore(RPMStore(db), retention_s=30 * 86400.0, max_per_user=cap)
    now = time.time()
    for i in range(cap):
        store.remember("t", "busy", f"chatcmpl-old-{i}", QUERY, ANSWER, None, created_at=now - 3600 + i * 0.001)
    out: dict[str, Any] = {
        "remember_fresh_user": timed(lambda i: store.remember("t", f"user-{i}", f"chatcmpl-{i}", QUERY, ANSWER, None), n),
        "remember_user_at_cap": timed(lambda i: store.remember("t", "busy", f"chatcmpl-new-{i}", QUERY, ANSWER, None), n),
    }
    store.remember("t", "rater", "chatcmpl-rated", QUERY, ANSWER, None)
    issued = store.issued("t", "rater", "chatcmpl-rated")
    assert issued is not None
    out["generation_read"] = timed(lambda i: store.generation("t", f"user-{i}"), n)
    out["apply_replacing"] = timed(
        lambda i: store.apply("t", "rater", issued, [(QUERY, f"choice {i}", None)], {"choice": f"choice {i}"}), n
    )
    assert store.count("t", "busy") == cap
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--cap", type=int, default=1000)
    args = parser.parse_args()
    import pgserver

    # Shared 2-core box: the load says how much of it other processes held while this ran.
    results: dict[str, Any] = {"n": args.n, "cap": args.cap, "load_average_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="rapport-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # pgserver runs the server as its own user when started as root
        server: Any = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
        try:
            db = Database.postgres(str(server.get_uri("postgres")))
            results["postgresql"] = bench(db, args.n, args.cap)
            db.close()
        finally:
            server.cleanup()
        sqlite = Database.sqlite(root / "rpm.sqlite3")
        results["sqlite"] = bench(sqlite, args.n, args.cap)
        sqlite.close()
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    rows = [(backend, name, v["p50_ms"], v["p95_ms"]) for backend in ("sqlite", "postgresql")
            for name, v in results[backend].items()]
    print(f"{'backend':<11} {'operation':<22} {'p50 ms':>8} {'p95 ms':>8}")
    for backend, name, p50, p95 in rows:
        print(f"{backend:<11} {name:<22} {p50:>8.3f} {p95:>8.3f}")


if __name__ == "__main__":
    main()
