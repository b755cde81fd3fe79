"""Memory bench, `postgres` store: retrieval + composition through the real MemoryService on PgVectorStore at
100k and 1M items over 10k users plus one user holding 100k items, recall of the per-user top-k against an exact
scan, and ingest items/s through the real write path with 64 writers beside embedded Chroma.

Run through bench/memory.py (`--modes postgres`); this module holds the PostgreSQL half.

How the rows are made (embedding 1.1M texts on 2 cores would take about an hour): every stored text is one of
PrefEval's preferences and questions, and its vector is that text's embedding by the default ingest model
(torch all-MiniLM-L6-v2) plus Gaussian noise (0.05 per dimension, cosine about 0.7 to the clean embedding), so
a user's items sit where real memories of those topics sit and a real question has near neighbours. Rows go in
by binary COPY, users interleaved chunk by chunk (one user's rows spread over the heap, as in a live table).
The big user's partial HNSW index is built by the store's own `build_index` (what its background build does
when a write crosses the threshold). The timed path is the real one: a fresh question embedded by the default
query embedding (ONNX Runtime fp32, cache missed), the store's query and the lexical search in PostgreSQL, rank,
compose.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from rich.console import Console
from tqdm import tqdm

from bench._common import percentiles
from memory.config import MemorySettings
from memory.embedding import (
    CachedEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
    SplitEmbedder,
    make_embedder,
)
from memory.jobs import JobQueue
from memory.pg_store import TABLE, PgVectorStore
from memory.service import MemoryOptions, MemoryService
from memory.stores.pg_indexes import DEFAULT_INDEX_THRESHOLD
from rapport.core.database import Database

console = Console()
Array = np.ndarray[Any, np.dtype[np.float32]]
TENANT = "bench"
BIG_USER = "big-user"
DIM = 384
SPREAD = 0.05  # per-dimension noise around a text's embedding (as in bench/pg_index.py)
RECALL_K = 10
# bench/memory.py's timed ingest: (service, texts, concurrent callers, tenant) -> its row.
IngestRun = Callable[[MemoryService, list[str], int, str], Awaitable[dict[str, Any]]]
BuildService = Callable[[Path, Embedder, str], MemoryService]


@dataclass(frozen=True)
class PgScale:
    users: int
    sizes: tuple[int, ...]  # ordinary items in the table at each measured point (spread over `users`)
    big: int  # items of the one big user
    queries: int
    big_queries: int
    recall_users: int
    ingest_items: int
    ingest_writers: int
    ingest_repeats: int


def scale_from_args(args: Any) -> PgScale:
    if args.quick:
        return PgScale(
            users=500,
            sizes=(5_000, 20_000),
            big=DEFAULT_INDEX_THRESHOLD + 2_000,
            queries=40,
            big_queries=40,
            recall_users=20,
            ingest_items=640,
            ingest_writers=args.pg_ingest_writers,
            ingest_repeats=1,
        )
    return PgScale(
        users=args.pg_users,
        sizes=tuple(int(s) for s in args.pg_sizes.split(",") if s),
        big=args.pg_big,
        queries=args.queries,
        big_queries=args.pg_big_queries,
        recall_users=args.pg_recall_users,
        ingest_items=args.ingest_items,
        ingest_writers=args.pg_ingest_writers,
        ingest_repeats=args.ingest_repeats,
    )


# -- the server -----------------------------------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL 16 + pgvector (the `pgserver` wheel the tests use); yields its URL."""
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="rapport-bench-pg-"))
    root.chmod(0o755)  # pgserver runs the server as its own user when started as root
    server: Any = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        url = str(server.get_uri("postgres"))
        with sa.create_engine(
            url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
        ).connect() as conn:
            # The HNSW build of the big user's 100k rows fits in memory with this (pgvector warns otherwise).
            conn.exec_driver_sql("ALTER SYSTEM SET maintenance_work_mem = '1GB'")
            conn.exec_driver_sql("SELECT pg_reload_conf()")
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def autocommit(db: Database, statement: str) -> float:
    started = time.perf_counter()
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(statement)
    return round(time.perf_counter() - started, 1)


# -- loading --------------------------------------------------------------------------------------------------

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_VEC_HEAD = struct.pack(">hh", DIM, 0)
_NULL = struct.pack(">i", -1)


def _field(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


class RowMaker:
    """Synthetic memory rows: text j of the pool, vector = that text's embedding + noise (module docstring)."""

    def __init__(self, texts: list[str], embeddings: Array, seed: int) -> None:
        self.texts = [t.encode() for t in texts]
        self.embeddings = embeddings
        self.rng = np.random.default_rng(seed)
        self.now = time.time()

    def vectors(self, picks: np.ndarray[Any, Any]) -> Array:
        rows = self.embeddings[picks] + SPREAD * self.rng.standard_normal((len(picks), DIM)).astype(np.float32)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def copy(self, db: Database, parts: list[tuple[str, int, int]]) -> dict[str, Array]:
        """One binary COPY of (user, first item index, count) parts; returns each part's vectors."""
        total = sum(n for _, _, n in parts)
        picks = self.rng.integers(0, len(self.texts), total)
        vecs = self.vectors(picks)
        big_endian = vecs.astype(">f4")
        out = io.BytesIO()
        out.write(_HEADER)
        tenant, source = _field(TENANT.encode()), _field(b"exchange")
        made: dict[str, Array] = {}
        row = 0
        for user, first, count in parts:
            u = _field(user.encode())
            made[user] = vecs[row : row + count]
            for i in range(first, first + count):
                role = b"user" if i % 2 == 0 else b"assistant"
                out.write(struct.pack(">h", 11))
                out.write(tenant + u + _field(f"{user}-{i}".encode()) + _field(self.texts[picks[row]]))
                out.write(_field(role) + _field(struct.pack(">d", self.now - i * 60.0)))
                out.write(_NULL * 3 + source + _field(_VEC_HEAD + big_endian[row].tobytes()))
                row += 1
        out.write(struct.pack(">h", -1))
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            columns = "tenant, user_id, id, text, role, ts, conversation_id, model, task, source, embedding"
            with cursor.copy(f"COPY {TABLE} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:  # type: ignore[attr-defined]
                copy.write(out.getvalue())
            raw.commit()
        finally:
            raw.close()
        return made


def load_ordinary(
    db: Database, maker: RowMaker, users: int, have: int, want: int, keep: set[str]
) -> dict[str, Array]:
    """Top every ordinary user up from `have` to `want` items, 10 items a user per COPY round; returns the
    vectors of the users in `keep` (the recall sample)."""
    kept: dict[str, Array] = {}
    rounds = list(range(have, want, 10))
    for first in tqdm(rounds, desc=f"COPY to {want * users} items", leave=False):
        count = min(10, want - first)
        for lo in range(0, users, 2_000):
            made = maker.copy(db, [(f"user-{u}", first, count) for u in range(lo, min(lo + 2_000, users))])
            for user in keep & made.keys():
                kept[user] = np.concatenate([kept[user], made[user]]) if user in kept else made[user]
    return kept


# -- measuring ------------------------------------------------------------------------------------------------


def pg_service(url: str, root: Path, embedder: Embedder) -> tuple[MemoryService, Database]:
    """The service as a replica builds it with `database_url` set: vectors, catalog and jobs in PostgreSQL."""
    db = Database.postgres(url)
    settings = MemorySettings(summaries=False)
    service = MemoryService(
        settings, data_dir=root, embedder=embedder, jobs=JobQueue(db), shared_db=db, catalog_db=db
    )
    assert isinstance(service.store, PgVectorStore)
    return service, db


def default_embedder(threads: int, cache_size: int = 4096) -> CachedEmbedder | SplitEmbedder:
    """The default split: ingest on torch, queries on ONNX Runtime fp32 (memory/config.py)."""
    defaults = MemorySettings()
    return make_embedder(
        backend=defaults.embedding_backend,
        query_backend=defaults.query_embedding_backend,
        threads=threads,
        cache_size=cache_size,
    )


async def time_compose(service: MemoryService, targets: list[tuple[str, str]], label: str) -> dict[str, Any]:
    samples: list[float] = []
    embed_ms: list[float] = []
    search_ms: list[float] = []
    tokens: list[int] = []
    base = [{"role": "system", "content": "You are helpful."}]
    for user, question in tqdm(targets, desc=label, leave=False):
        started = time.perf_counter()
        _, retrieval = await service.compose(
            TENANT, user, [*base, {"role": "user", "content": question}], MemoryOptions(k=5)
        )
        samples.append((time.perf_counter() - started) * 1000.0)
        embed_ms.append(retrieval.embed_ms)
        search_ms.append(retrieval.search_ms)
        tokens.append(retrieval.tokens)
    return {
        **percentiles(samples),
        "embed_p50_ms": round(float(np.percentile(embed_ms, 50)), 3),
        "embed_p95_ms": round(float(np.percentile(embed_ms, 95)), 3),
        "search_p50_ms": round(float(np.percentile(search_ms, 50)), 3),
        "search_p95_ms": round(float(np.percentile(search_ms, 95)), 3),
        "queries": len(samples),
        "mean_tokens_added": round(float(np.mean(tokens)), 1),
    }


def questions_for(questions: list[str], start: int, n: int) -> list[str]:
    """n questions from `start`, repeated with a round marker past the end (each text is a query-cache miss)."""
    out = []
    for i in range(start, start + n):
        q = questions[i % len(questions)]
        out.append(q if i < len(questions) else f"{q} ({i // len(questions)})")
    return out


async def measure_point(
    url: str, root: Path, questions: list[str], scale: PgScale, threads: int, offset: int
) -> dict[str, Any]:
    """Retrieval + composition at the current table: random users (the big one among them at its share), and
    the big user alone. A fresh embedder: every timed question misses the query cache."""
    embedder = default_embedder(threads)
    await embedder.warm()
    service, db = pg_service(url, root, embedder)
    try:
        rng = random.Random(offset)
        warm = questions_for(questions, offset + 10_000, 5)
        for q in warm:
            await service.compose(TENANT, "user-0", [{"role": "user", "content": q}])
        users = [f"user-{rng.randrange(scale.users)}" for _ in range(scale.queries)]
        overall = await time_compose(
            service, list(zip(users, questions_for(questions, offset, scale.queries), strict=True)), "compose"
        )
        big = await time_compose(
            service,
            [(BIG_USER, q) for q in questions_for(questions, offset + scale.queries, scale.big_queries)],
            "compose big user",
        )
        # The search step split: the dense query and the lexical (BM25) search run side by side inside it; timed
        # here one at a time with the same questions and vectors, for ordinary users and for the big one.
        split_questions = questions_for(questions, offset + 20_000, 40)
        split_vectors = await embedder.embed(split_questions)
        overall["search_split"] = await asyncio.to_thread(
            search_split, service, users[:40], split_questions, split_vectors
        )
        big["search_split"] = await asyncio.to_thread(
            search_split, service, [BIG_USER] * 40, split_questions, split_vectors
        )
        overall["big_user"] = big
        overall["users"] = scale.users
        overall["big_user_items"] = scale.big
        overall["loadavg"] = list(os.getloadavg())
        return overall
    finally:
        await service.writer.aclose()
        service.close()
        db.close()
        embedder.close()


def search_split(
    service: MemoryService, users: list[str], questions: list[str], vectors: Array
) -> dict[str, Any]:
    """p50/p95 of `PgVectorStore.query` (the candidates the service asks for) and of the lexical search alone."""
    n = service.settings.top_k * service.settings.candidates_factor
    dense: list[float] = []
    lexical: list[float] = []
    for user, question, vector in zip(users, questions, vectors, strict=True):
        started = time.perf_counter()
        service.store.query(TENANT, user, vector, n)
        dense.append((time.perf_counter() - started) * 1000.0)
        if service.lexical is not None:
            started = time.perf_counter()
            service.lexical.search(TENANT, user, question, service.settings.lexical_candidates or n)
            lexical.append((time.perf_counter() - started) * 1000.0)
    return {
        "dense_query": percentiles(dense),
        "lexical_search": percentiles(lexical) if lexical else None,
        "queries": len(dense),
        "candidates": n,
    }


def exact_top(db: Database, user: str, q: Array, k: int) -> list[str]:
    """The user's exact top-k by cosine distance: every row of the user scored (the plain column expression
    cannot use a partial index, which is built on `embedding::vector(d)`)."""
    from memory.pg_store import vector_literal

    with db.read() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT id FROM {TABLE} WHERE tenant = :t AND user_id = :u "
                "ORDER BY embedding <=> CAST(:q AS vector) LIMIT :k"
            ),
            {"t": TENANT, "u": user, "q": vector_literal(q), "k": k},
        ).scalars()
        return [str(r) for r in rows]


def recall_check(
    url: str, query_vectors: Array, sample: list[str], big_vectors: Array, big_queries: int
) -> dict[str, Any]:
    """Recall@10 of `PgVectorStore.query` against an exact scan: sampled ordinary users (two queries each,
    exact scan in SQL) and the big user through its partial HNSW index (exact top-k computed with numpy over
    the rows as loaded)."""
    db = Database.postgres(url)
    store = PgVectorStore(db, DIM)
    try:
        hits = total = 0
        for n, user in enumerate(tqdm(sample, desc="recall (users)", leave=False)):
            for q in (query_vectors[(2 * n) % len(query_vectors)], query_vectors[(2 * n + 1) % len(query_vectors)]):
                found = {h.item.id for h in store.query(TENANT, user, q, RECALL_K)}
                truth = exact_top(db, user, q, RECALL_K)
                hits += len(found & set(truth))
                total += len(truth)
        qs = query_vectors[:big_queries]
        order = np.argsort(-(qs @ big_vectors.T), axis=1)[:, :RECALL_K]
        big_hits = 0
        for q, row in zip(tqdm(qs, desc="recall (big user)", leave=False), order, strict=True):
            found = {h.item.id for h in store.query(TENANT, BIG_USER, q, RECALL_K)}
            big_hits += len(found & {f"{BIG_USER}-{i}" for i in row})
        return {
            "k": RECALL_K,
            "ordinary_users": len(sample),
            "ordinary_queries": 2 * len(sample),
            "ordinary_recall": round(hits / max(total, 1), 4),
            "big_user_queries": len(qs),
            "big_user_recall": round(big_hits / (RECALL_K * len(qs)), 4),
            "big_user_has_index": store.has_index(TENANT, BIG_USER),
            "queries": "PrefEval questions embedded by the default query embedding",
        }
    finally:
        db.close()


def rows_note(scale: PgScale) -> str:
    return (
        f"binary COPY of precomputed vectors: {scale.users} users, items interleaved 10 a user per round, "
        f"and one user of {scale.big} items; each row's text is a PrefEval preference or question and its "
        f"vector that text's torch embedding plus N(0, {SPREAD}) noise per dimension, renormalized; the big "
        "user's partial HNSW index built by PgVectorStore.build_index"
    )


async def run_postgres(
    args: Any,
    pool_texts: list[str],
    ingest_texts: list[str],
    questions: list[str],
    reference: SentenceTransformerEmbedder,
    ingest: IngestRun,
    build_embedded: BuildService,
    workdir: Path,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """The postgres store's rows: (retrieval by size, ingest rows, the postgres section of memory.json).

    `pool_texts`: the distinct texts the synthetic rows carry; `reference`: the fp32 torch embedder whose
    vectors seed them; `ingest`: bench/memory.py's timed ingest; `build_embedded`: an embedded-Chroma service
    (its ingest is measured in the same run, interleaved with the postgres one).
    """
    scale = scale_from_args(args)
    section: dict[str, Any] = {
        "rows": rows_note(scale),
        "scale": vars(scale),
        "loadavg_start": list(os.getloadavg()),
        "cores": os.cpu_count(),
    }
    console.print(f"[bold]postgres[/bold]: embedding {len(pool_texts)} pool texts (torch)")
    embeddings = np.asarray(reference.encode_sync(pool_texts), dtype=np.float32)
    maker = RowMaker(pool_texts, embeddings, seed=11)
    retrieval: dict[str, Any] = {}
    ingest_rows: dict[str, dict[str, Any]] = {}
    sample = [f"user-{u}" for u in random.Random(5).sample(range(scale.users), min(scale.recall_users, scale.users))]
    with postgres_server() as url:
        db = Database.postgres(url, pool_size=2, max_overflow=0)
        try:
            PgVectorStore(db, DIM, index_threshold=0)  # creates the schema
            section["postgres"] = db.ping()
            with db.read() as conn:
                section["shared_buffers"] = str(conn.execute(sa.text("SHOW shared_buffers")).scalar_one())
            started = time.perf_counter()
            big_vectors = np.concatenate(
                [
                    maker.copy(db, [(BIG_USER, lo, min(20_000, scale.big - lo))])[BIG_USER]
                    for lo in tqdm(range(0, scale.big, 20_000), desc=f"COPY big user {scale.big}", leave=False)
                ]
            )
            section["big_user_load_s"] = round(time.perf_counter() - started, 1)
            started = time.perf_counter()
            PgVectorStore(db, DIM).build_index(TENANT, BIG_USER)
            section["big_user_index_build_s"] = round(time.perf_counter() - started, 1)
            console.print(
                f"big user: {scale.big} rows in {section['big_user_load_s']} s, "
                f"partial HNSW in {section['big_user_index_build_s']} s"
            )
            query_vectors = np.asarray(
                reference.encode_sync(questions_for(questions, 0, max(scale.big_queries, 2 * len(sample)))),
                dtype=np.float32,
            )
            have = 0
            kept: dict[str, Array] = {}
            section["points"] = {}
            for size in scale.sizes:
                per_user = size // scale.users
                started = time.perf_counter()
                kept.update(load_ordinary(db, maker, scale.users, have, per_user, set(sample)))
                vacuum = autocommit(db, f"VACUUM ANALYZE {TABLE}")
                load_s = round(time.perf_counter() - started, 1)
                have = per_user
                console.print(f"postgres {size}: loaded in {load_s} s (VACUUM ANALYZE {vacuum} s)")
                stats = await measure_point(url, workdir / f"pg-{size}", questions, scale, args.torch_threads, size)
                stats["bulk_load_s"] = load_s
                stats["table_rows"] = size + scale.big
                retrieval[str(size)] = stats
                section["points"][str(size)] = {
                    "recall": recall_check(url, query_vectors, sample, big_vectors, scale.big_queries),
                    "table_rows": size + scale.big,
                }
                console.print(f"postgres {size}: {stats} recall {section['points'][str(size)]['recall']}")
            # Ingest beside embedded Chroma, interleaved run by run (the shared cores' load drifts by the minute).
            fresh = make_embedder(backend="torch", threads=args.torch_threads, cache_size=0)
            await fresh.warm()
            items = ingest_texts[: scale.ingest_items]
            runs: dict[str, list[dict[str, Any]]] = {"postgres": [], "embedded": []}
            try:
                for rep in range(scale.ingest_repeats):
                    service, sdb = pg_service(url, workdir / f"pg-ingest-{rep}", fresh)
                    try:
                        runs["postgres"].append(await ingest(service, items, scale.ingest_writers, f"ingest{rep}"))
                    finally:
                        await service.writer.aclose()
                        service.close()
                        sdb.close()
                    chroma = build_embedded(workdir / f"chroma-ingest-{rep}", fresh, f"pgside{rep}")
                    try:
                        runs["embedded"].append(await ingest(chroma, items, scale.ingest_writers, TENANT))
                    finally:
                        await chroma.writer.aclose()
                        chroma.close()
                    console.print(
                        f"ingest run {rep + 1}: postgres {runs['postgres'][-1]['items_per_s']} items/s, "
                        f"embedded {runs['embedded'][-1]['items_per_s']} items/s"
                    )
            finally:
                fresh.close()
            for store, store_runs in runs.items():
                store_runs.sort(key=lambda r: r["items_per_s"])
                row = dict(store_runs[len(store_runs) // 2])
                row["runs_items_per_s"] = [r["items_per_s"] for r in store_runs]
                row["repeats"] = len(store_runs)
                row["table_rows_before"] = (scale.sizes[-1] + scale.big) if store == "postgres" else None
                # The embedded row's own key: it is this run's control (same minutes, same load), not the
                # embedded store's row measured on its own (embedded/torch/c64), which it must not replace.
                suffix = "" if store == "postgres" else "/beside-postgres"
                ingest_rows[f"{store}/torch/c{scale.ingest_writers}{suffix}"] = row
        finally:
            db.close()
    section["loadavg_end"] = list(os.getloadavg())
    section["ingest_same_run"] = sorted(ingest_rows)
    return retrieval, ingest_rows, section
