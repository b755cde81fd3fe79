"""LoCoMo recall: does the evidence a multi-session question needs reach the upstream prompt?

    .venv/bin/python -m bench.locomo_recall [--conversations 26,30,41] [--arms all|dense,hybrid,...]
        [--set memory.lexical_fusion=weighted ...] [--out bench/results/locomo_recall.json]
        [--store embedded|postgres] [--database-url URL]

Black-box, through the HTTP API with the official `openai` SDK, against a real Rapport server (memory stage only:
the real all-MiniLM-L6-v2 embedder, real embedded Chroma, the SQLite FTS5 lexical index; or, with `--store
postgres`, the shared-state backend: pgvector and PostgreSQL full-text search in one table, memory/stores/
pg_lexical.py, on a fresh database of a pgserver the bench starts, or of `--database-url`) in front of a scripted
upstream that records every request and answers with an echo (no LLM; summaries are off, since there is no
utility LLM to write them).

Ingest: one Rapport user per conversation. Every dialog turn of both speakers is sent, in order, as one chat
message of that user, written "<speaker>: <text>" (a photo a speaker shares is appended as "[shares a photo:
<caption>]"): a memory of a conversation between two people is only useful if it says who said what, and the
questions name the speaker. Each LoCoMo session is one Rapport conversation (`rapport.conversation_id`), so
a turn's neighbours are the turns before and after it in its session. Ingest requests ask for no retrieval
(`rapport.memory.k = 0`), which changes nothing about what is stored.

Questions: each benchmark question is asked as that user with `rapport.record = false` (not stored), once per
arm (per-request `rapport.memory` options), and the system message the upstream received is checked for the
text of each of the question's evidence turns (as the memory block quotes it). Reported per arm, per
conversation and for all: the share of questions whose evidence turns ALL reached the prompt, the share of
evidence turns that did, and the memory block's tokens (`tokens_added` from the `rapport` extension: Rapport's
4-characters-per-token estimate of the whole block, frame included), for categories 1-4 (answerable) and for
all five (5 is adversarial). Questions with an evidence id that names no turn are left out and counted.

Data: LoCoMo (Maharana et al., "Evaluating Very Long-Term Conversational Memory of LLM Agents", ACL 2024),
three conversations of its release read from ../shared/data/locomo-dev (research data: used to evaluate, cited
here, never copied into the project). Writes bench/results/locomo_recall.{json,png} (or --out's); `--store
postgres` writes bench/results/locomo_recall_postgres.{json,png}, with its ranking arms (PostgreSQL offers BM25,
computed in SQL, and ts_rank_cd, which has no IDF) and the embedded run's numbers for the same arms beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from tqdm import tqdm

from bench._common import RESULTS, ROOT
from memory.compose import quote

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

DATA = ROOT / ".." / "shared" / "data" / "locomo-dev"
API_KEY = "rk-bench-locomo"
ADMIN_KEY = "admin-bench-locomo-0123456789"
TENANT = "locomo"
MODEL = "bench-model"
DENSE = {"lexical": False, "neighbours": False}
OLD_DEFAULTS = {"k": 5, "budget": 512}  # top_k and token_budget before hybrid retrieval
# name -> per-request rapport.memory options. "@512" arms use the old defaults (5 items, 512 tokens);
# "@1000" arms cap the block at 1,000 tokens with enough candidates to fill it; "defaults" sends no option
# (today's defaults: weighted BM25 + dense fusion, neighbours, 10 items, 1,000 tokens).
ARMS: dict[str, dict[str, Any]] = {
    "dense@512": {**DENSE, **OLD_DEFAULTS},
    "dense@k20-b4000": {**DENSE, "k": 20, "budget": 4000},
    "dense@1000": {**DENSE, "k": 25, "budget": 1000},
    "lexical@512": {"lexical": True, "neighbours": False, **OLD_DEFAULTS},
    "lexical@1000": {"lexical": True, "neighbours": False, "k": 25, "budget": 1000},
    "neighbours@1000": {"lexical": False, "neighbours": True, "k": 10, "budget": 1000},
    "lexical+neighbours@512": {"lexical": True, "neighbours": True, **OLD_DEFAULTS},
    "defaults": {},
}
# Only PostgreSQL offers a second rank (the embedded FTS5 index has bm25 alone): the same arms ranked by
# ts_rank_cd, to measure whether BM25's IDF matters.
TS_RANK_ARMS: dict[str, dict[str, Any]] = {
    "lexical-ts_rank_cd@512": {"lexical": True, "neighbours": False, "lexical_rank": "ts_rank_cd", **OLD_DEFAULTS},
    "lexical-ts_rank_cd@1000": {
        "lexical": True, "neighbours": False, "lexical_rank": "ts_rank_cd", "k": 25, "budget": 1000
    },
    "defaults-ts_rank_cd": {"lexical_rank": "ts_rank_cd"},
}
CATEGORIES = ("1-4", "all")


def turn_text(speaker: str, turn: dict[str, Any], style: str = "speaker") -> str:
    if style == "raw":  # the first measurement: the turn's text alone
        return str(turn["text"])
    text = f"{speaker}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" [shares a photo: {turn['blip_caption']}]"
    return text


def load(conversation: str, style: str) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """The conversation's turns in order as (dia_id, session, message) and its questions."""
    raw = json.loads((DATA / f"{conversation}.json").read_text())
    sessions = sorted(
        (k for k in raw if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k.split("_")[1])
    )
    turns = [(t["dia_id"], s, turn_text(t["speaker"], t, style)) for s in sessions for t in raw[s]]
    return turns, raw["qa"]


def evidence_ids(question: dict[str, Any]) -> list[str]:
    # A few labels hold two ids in one string ("D8:6; D9:17").
    return [e for raw in question.get("evidence", []) for e in re.split(r"[;,\s]+", raw) if e]


def start(data_dir: Path, overrides: dict[str, Any], database_url: str | None = None) -> tuple[Any, Any]:
    from proxy.app import create_app
    from proxy.settings import RapportSettings
    from tests.support.servers import ThreadedServer
    from tests.support.upstream import ScriptedUpstream

    upstream = ScriptedUpstream().start()
    memory: dict[str, Any] = {"summaries": False, **overrides}
    shared = {"database_url": database_url} if database_url else {}
    settings = RapportSettings.model_validate(
        {
            **shared,
            "data_dir": str(data_dir),
            "local": {"enabled": False},
            "model_list": [
                {
                    "model_name": MODEL,
                    "litellm_params": {"model": "openai/scripted", "api_base": upstream.base_url, "api_key": "x"},
                }
            ],
            "auth": {"admin_key": ADMIN_KEY, "static_keys": [{"key": API_KEY, "tenant": TENANT}]},
            "server": {"log_level": "warning"},
            "memory": memory,
        }
    )
    app = create_app(settings, ("proxy.stages.memory_plugin:build",))
    server = ThreadedServer(app).start()
    return upstream, server


def ingest(client: openai.OpenAI, admin: httpx.Client, user: str, conversation: str, turns: list[Any]) -> float:
    started = time.perf_counter()
    for _, session, text in tqdm(turns, desc=f"ingest {conversation}", leave=False):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            user=user,
            extra_body={"rapport": {"conversation_id": f"{conversation}-{session}", "memory": {"k": 0}}},
        )
    # Every distinct message is one item (the same text twice is one item): wait until all are listable.
    expected = len({" ".join(t.split()) for _, _, t in turns})
    deadline = time.monotonic() + 120
    while True:
        r = admin.get(f"/admin/users/{user}/memories", params={"tenant": TENANT, "limit": 1})
        if r.status_code == 200 and r.json()["total"] >= expected:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {r.json().get('total')} of {expected} turns stored")
        time.sleep(0.2)
    return time.perf_counter() - started


def ask(
    client: openai.OpenAI, upstream: Any, user: str, question: str, options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    upstream.reset()
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        user=user,
        extra_body={"rapport": {"record": False, "memory": options}},
    )
    sent = upstream.requests[-1].json["messages"]
    system = sent[0]["content"] if sent and sent[0]["role"] == "system" else ""
    stage = next(s for s in (result.model_extra or {})["rapport"]["stages"] if s["name"] == "memory")
    return system, stage.get("detail") or {}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cat in CATEGORIES:
        chosen = [r for r in rows if cat == "all" or r["category"] != 5]
        if not chosen:
            continue
        turns = sum(r["evidence"] for r in chosen)
        tokens = [r["tokens"] for r in chosen]
        out[cat] = {
            "questions": len(chosen),
            "all_evidence": round(sum(r["found"] == r["evidence"] for r in chosen) / len(chosen), 4),
            "evidence_turns": round(sum(r["found"] for r in chosen) / turns, 4) if turns else None,
            "tokens_mean": round(statistics.fmean(tokens), 1),
            "tokens_p50": statistics.median(tokens),
            "tokens_max": max(tokens),
            # The memory stage's own time (embed + search + compose), as the extension reports it.
            "retrieval_ms_p50": round(statistics.median(r["ms"] for r in chosen), 2),
            "retrieval_ms_p95": round(sorted(r["ms"] for r in chosen)[int(0.95 * (len(chosen) - 1))], 2),
        }
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        assert key.startswith("memory."), "only memory.* settings"
        try:
            out[key.removeprefix("memory.")] = json.loads(value)
        except ValueError:
            out[key.removeprefix("memory.")] = value
    return out


def plot(report: dict[str, Any], path: Path, store: str = "embedded") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(report)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(arms)), 4.8))
    width = 0.38
    for j, cat in enumerate(CATEGORIES):
        values = [100 * report[a]["all"][cat]["all_evidence"] for a in arms]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(arms))], values, width, label=f"categories {cat}")
        for bar, arm in zip(bars, arms, strict=True):
            tokens = report[arm]["all"][cat]["tokens_mean"]
            ax.annotate(f"{tokens:.0f}t", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.axhline(60, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("questions with all evidence in the prompt (%)")
    where = "PostgreSQL: pgvector + full-text search" if store == "postgres" else "embedded: Chroma + SQLite FTS5"
    ax.set_title(f"LoCoMo (conversations 26, 30, 41): evidence reaching the upstream prompt ({where})\n"
                 "(labels: mean memory-block tokens, 4 chars/token)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", default="26,30,41")
    parser.add_argument("--arms", default="all", help="comma-separated arm names, or all")
    parser.add_argument("--set", action="append", default=[], help="memory.<setting>=<value> on the server")
    parser.add_argument(
        "--arm", action="append", default=[], help='an extra arm: name=<rapport.memory options as JSON>'
    )
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/locomo_recall[_postgres].json")
    parser.add_argument("--store", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument(
        "--database-url", default=None, help="with --store postgres: an empty database to use (default: a pgserver)"
    )
    parser.add_argument(
        "--format", choices=("speaker", "raw"), default="speaker", help="how a turn is written as a message"
    )
    args = parser.parse_args()
    known = {**ARMS, **TS_RANK_ARMS} if args.store == "postgres" else ARMS
    if args.arms == "all":
        arms = dict(known)
    else:
        arms = {a: known[a] for a in args.arms.split(",") if a}
    if args.out is None:
        args.out = RESULTS / ("locomo_recall_postgres.json" if args.store == "postgres" else "locomo_recall.json")
    for extra in args.arm:
        name, _, options = extra.partition("=")
        arms[name] = json.loads(options)
    overrides = parse_overrides(args.set)
    workdir = Path(tempfile.mkdtemp(prefix="rapport-locomo-"))
    pg, database_url = None, args.database_url
    if args.store == "postgres" and database_url is None:
        from tests.support.postgres import PostgresServer

        workdir.chmod(0o755)  # pgserver runs the server as its own user when started as root
        (workdir / "pg").mkdir()
        pg = PostgresServer(workdir / "pg")
        database_url = pg.url(pg.create_database())
    upstream, server = start(workdir / "data", overrides, database_url)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ingest_s: dict[str, float] = {}
    dropped: dict[str, int] = {}
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
        for conversation in args.conversations.split(","):
            turns, questions = load(conversation, args.format)
            by_id = {dia_id: text for dia_id, _, text in turns}
            user = f"locomo-{conversation}"
            ingest_s[conversation] = round(ingest(client, admin, user, conversation, turns), 1)
            usable = [q for q in questions if evidence_ids(q) and all(e in by_id for e in evidence_ids(q))]
            dropped[conversation] = len(questions) - len(usable)
            for q in tqdm(usable, desc=f"questions {conversation}"):
                needles = [quote(by_id[e])[1:-1] for e in dict.fromkeys(evidence_ids(q))]
                for arm, options in arms.items():
                    system, detail = ask(client, upstream, user, q["question"], options)
                    rows.append(
                        {
                            "conversation": conversation,
                            "arm": arm,
                            "category": int(q["category"]),
                            "evidence": len(needles),
                            "found": sum(n in system for n in needles),
                            "tokens": int(detail.get("tokens_added", 0)),
                            "items": int(detail.get("items", 0)),
                            "neighbours": int(detail.get("neighbours", 0)),
                            "ms": float(detail.get("ms", 0.0)),
                            "lexical_rank": detail.get("lexical_rank"),
                        }
                    )
    finally:
        server.stop()
        upstream.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report: dict[str, Any] = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        report[arm] = {"all": summarize(mine)}
        for conversation in args.conversations.split(","):
            report[arm][conversation] = summarize([r for r in mine if r["conversation"] == conversation])
    from memory.config import MemorySettings

    defaults = MemorySettings(**{"summaries": False, **overrides})
    out: dict[str, Any] = {
        "config": {
            "store": args.store,
            "conversations": args.conversations.split(","),
            "format": args.format,
            "arms": arms,
            "server_memory_settings": overrides,
            "top_k": defaults.top_k,
            "token_budget": defaults.token_budget,
            "lexical_fusion": defaults.lexical_fusion,
            "lexical_weight": defaults.lexical_weight,
            "rrf_k": defaults.rrf_k,
            "candidates_factor": defaults.candidates_factor,
            "embedder": "all-MiniLM-L6-v2 (packaged; torch ingest, onnx queries)",
            "ingest": "chat by chat through /v1/chat/completions, rapport.memory.k=0, one user per conversation",
            "tokens": "tokens_added of the rapport extension: 4-characters-per-token estimate of the whole block",
        },
        "data": "LoCoMo (Maharana et al., ACL 2024), conversations 26/30/41 read from ../shared/data/locomo-dev; "
        "research data, not copied",
        "questions_left_out_bad_evidence": dropped,
        "ingest_seconds": ingest_s,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "report": report,
        "rows": rows,
    }
    embedded_file = RESULTS / "locomo_recall.json"
    if args.store == "postgres" and embedded_file.exists():
        # The embedded store's committed run, for the arms both stores have (all-evidence share, categories 1-4).
        embedded = json.loads(embedded_file.read_text())["report"]
        out["embedded_reference"] = {
            arm: {conv: cats["1-4"]["all_evidence"] for conv, cats in embedded[arm].items()}
            for arm in arms
            if arm in embedded
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\n{'arm':32} {'conv':>5} {'cat':>4} {'n':>4} {'all-ev%':>8} {'turns%':>7} {'tokens':>7}")
    for arm, per in report.items():
        for conversation, cats in per.items():
            for cat, m in cats.items():
                print(
                    f"{arm:32} {conversation:>5} {cat:>4} {m['questions']:>4} {100 * m['all_evidence']:>8.1f} "
                    f"{100 * (m['evidence_turns'] or 0):>7.1f} {m['tokens_mean']:>7.0f}"
                )
    plot(report, args.out.with_suffix(".png"), args.store)


if __name__ == "__main__":
    main()
