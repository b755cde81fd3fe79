"""Lexical query latency on PostgreSQL (memory/stores/pg_lexical.py): BM25 and ts_rank_cd for one user holding
100k items, among other users, and what the query-time BM25 statistics cost.

    .venv/bin/python -m bench.pg_lexical [--big 100000] [--users 1000] [--per-user 100] [--queries 200]

Data (synthetic, seeded, said so in the result): a vocabulary of 20,000 made-up words whose frequencies follow
Zipf's law (exponent 1.07, as in English text), less its 150 most frequent ranks (function words, which text
search drops as stopwords); every item is 8 to 20 words drawn from it, so a query word can
be as common as "like" in a chat history or as rare as a name. One big user holds `--big` items; `--users`
other users hold `--per-user` each, written interleaved with the big user's, so the GIN posting lists hold every
user's rows as a live table's do. Vectors are 8-dimensional and random: the lexical query never reads them.
Queries: 5 words drawn from the same distribution (most queries hold at least one common word: the expensive
case, many matched rows), asked through the real `PgLexicalIndex.search` (a connection from the pool, rows
parsed). Also timed: the per-user statistics pass alone (N and mean length, what maintaining them
incrementally would save), and a 100-item user (the ordinary case). Writes bench/results/pg_lexical.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from bench._common import RESULTS, percentiles
from memory.items import MemoryItem
from memory.pg_store import TABLE, PgVectorStore
from memory.stores.pg_lexical import PgLexicalIndex
from rapport.core.database import Database

console = Console()
VOCABULARY = 20_000
ZIPF = 1.07
# The most frequent ranks of a Zipf vocabulary are function words ("the", "and", "I"): English text search drops
# those as stopwords in items and queries alike, so the synthetic text leaves them out too.
STOP_RANKS = 150
DIM = 8
K = 50  # lexical candidates a request asks for (k 10 x candidates_factor)


def make_words(rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(letters, int(rng.integers(4, 10)))))
    return sorted(words)


class Sampler:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.words = make_words(rng)
        weights = 1.0 / np.arange(1, VOCABULARY + 1) ** ZIPF
        weights[:STOP_RANKS] = 0.0
        self.p = weights / weights.sum()

        self._pool = np.zeros(0, dtype=np.int64)

    def text(self, low: int, high: int) -> str:
        # Words drawn in bulk: one weighted draw per word costs a pass over the whole vocabulary.
        size = int(self.rng.integers(low, high + 1))
        if len(self._pool) < size:
            self._pool = self.rng.choice(VOCABULARY, 1_000_000, p=self.p)
        picks, self._pool = self._pool[:size], self._pool[size:]
        return " ".join(self.words[i] for i in picks)


def load(store: PgVectorStore, sampler: Sampler, big: int, users: int, per_user: int) -> float:
    started = time.perf_counter()
    rng = sampler.rng
    small_rows = [(f"user-{u}", i) for u in range(users) for i in range(per_user)]
    rng.shuffle(small_rows)  # type: ignore[arg-type]
    chunk = 2000
    big_done, small_done, ts = 0, 0, 0.0
    while big_done < big or small_done < len(small_rows):
        batch: list[MemoryItem] = []
        for _ in range(min(chunk, big - big_done)):
            batch.append(MemoryItem("t", "big", sampler.text(8, 20), ts=ts, id=f"b{big_done}"))
            big_done += 1
            ts += 1
        for user, i in small_rows[small_done : small_done + chunk // 2]:
            batch.append(MemoryItem("t", user, sampler.text(8, 20), ts=ts, id=f"s{i}"))
            ts += 1
        small_done += chunk // 2
        vectors = rng.standard_normal((len(batch), DIM)).astype(np.float32)
        store.add(batch, vectors)
    with store.db.write() as conn:
        conn.exec_driver_sql(f"ANALYZE {TABLE}")
    return time.perf_counter() - started


def time_search(index: PgLexicalIndex, user: str, queries: list[str], rank: str) -> dict[str, Any]:
    samples, matches = [], []
    for query in queries:
        started = time.perf_counter()
        hits = index.search("t", user, query, K, rank=rank)  # type: ignore[arg-type]
        samples.append((time.perf_counter() - started) * 1000.0)
        matches.append(len(hits))
    return {**percentiles(samples), "mean_hits": round(float(np.mean(matches)), 1)}


def time_stats(db: Database, user: str, repeat: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        with db.read() as conn:
            conn.execute(
                sa.text(
                    f"SELECT count(*), avg(length(lexemes) - 1) FROM {TABLE} WHERE tenant = 't' AND user_id = :u"
                ),
                {"u": user},
            ).one()
        samples.append((time.perf_counter() - started) * 1000.0)
    return percentiles(samples)


def matched_rows(db: Database, index: PgLexicalIndex, user: str, queries: list[str]) -> float:
    """How many of the user's rows a query matches, on average (what the BM25 pass reads)."""
    from memory.stores.pg_lexical import owner_lexeme, tsquery_literal

    counts = []
    with db.read() as conn:
        for query in queries[:50]:
            lexemes = index.lexemes(conn, query)
            match = f"'{owner_lexeme('t', user)}' & ({tsquery_literal(lexemes)})"
            counts.append(
                conn.execute(
                    sa.text(
                        f"SELECT count(*) FROM {TABLE} WHERE tenant = 't' AND user_id = :u "
                        "AND lexemes @@ CAST(:m AS tsquery)"
                    ),
                    {"u": user, "m": match},
                ).scalar_one()
            )
    return float(np.mean(counts))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS / "pg_lexical.json"))
    args = parser.parse_args()

    import pgserver

    rng = np.random.default_rng(11)
    root = Path(tempfile.mkdtemp(prefix="pg-lexical-"))
    root.chmod(0o755)  # pgserver runs the server as its own user when started as root
    server: Any = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    db = Database.postgres(server.get_uri("postgres"), pool_size=2, max_overflow=0)
    try:
        store = PgVectorStore(db, DIM, index_threshold=0)  # no HNSW: the vectors are not what is measured
        index = PgLexicalIndex(db, TABLE)
        sampler = Sampler(rng)
        load_s = load(store, sampler, args.big, args.users, args.per_user)
        queries = [sampler.text(5, 5) for _ in range(args.queries)]
        for query in queries[:20]:  # warm the caches
            index.search("t", "big", query, K)
        result: dict[str, Any] = {
            "config": {
                **{k: v for k, v in vars(args).items() if k != "out"},
                "data": f"synthetic: {VOCABULARY} made-up words, Zipf {ZIPF} without its top {STOP_RANKS} ranks, "
                "8-20 words an item, 5-word queries",
                "k": K,
                "postgres": db.ping(),
                "cpus": os.cpu_count(),
                "loadavg_before": os.getloadavg(),
            },
            "load_seconds": round(load_s, 1),
            "rows": args.big + args.users * args.per_user,
            "big_user": {
                "items": args.big,
                "matched_rows_mean": matched_rows(db, index, "big", queries),
                "bm25": time_search(index, "big", queries, "bm25"),
                "ts_rank_cd": time_search(index, "big", queries, "ts_rank_cd"),
                "stats_pass": time_stats(db, "big", 50),
            },
            "small_user": {
                "items": args.per_user,
                "bm25": time_search(index, "user-1", queries, "bm25"),
                "ts_rank_cd": time_search(index, "user-1", queries, "ts_rank_cd"),
                "stats_pass": time_stats(db, "user-1", 50),
            },
        }
        result["config"]["loadavg_after"] = os.getloadavg()
    finally:
        db.close()
        server.cleanup()
    Path(args.out).write_text(json.dumps(result, indent=1))
    table = Table(title=f"lexical search on PostgreSQL ({result['rows']} rows, top {K})")
    for col in ("user", "items", "rank", "p50 ms", "p95 ms", "hits"):
        table.add_column(col)
    for name in ("big_user", "small_user"):
        part = result[name]
        for rank in ("bm25", "ts_rank_cd", "stats_pass"):
            m = part[rank]
            table.add_row(name, str(part["items"]), rank, f"{m['p50_ms']:.2f}", f"{m['p95_ms']:.2f}",
                          str(m.get("mean_hits", "")))
    console.print(table)
    console.print(f"big user: {result['big_user']['matched_rows_mean']:.0f} rows matched per query on average")


if __name__ == "__main__":
    main()
