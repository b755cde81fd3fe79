"""Aggregation, table and plot for bench/prefeval_recall.py (kept apart to keep each module small)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console(width=200)
_ARMS = ("retrieval", "retrieval_small", "augmented")


def _mean(rows: list[dict[str, Any]], arm: str, key: str, digits: int = 3) -> float:
    return round(float(np.mean([float(r[arm][key]) for r in rows])), digits)


def aggregate(rows: list[dict[str, Any]], turns: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in turns:
        sel = [r for r in rows if r["n"] == n]
        entry: dict[str, Any] = {"questions": len(sel)}
        aug = [r for r in sel if "augmented" in r]
        for arm in _ARMS:
            group = aug if arm == "augmented" else sel
            if not group:
                continue
            entry[arm] = {
                "questions": len(group),
                "recall": _mean(group, arm, "hit"),
                **{
                    f"{key}_mean": _mean(group, arm, key, 1)
                    for key in ("tokens", "summary_tokens", "item_tokens", "items")
                },
            }
        if aug:
            entry["augmented"].update(
                item_recall=_mean(aug, "augmented", "item_hit"),
                summary_recall=_mean(aug, "augmented", "summary_hit"),
                recall_lenient=_mean(aug, "augmented", "hit_lenient"),
                summary_recall_lenient=_mean(aug, "augmented", "summary_hit_lenient"),
                recall_cosine_only=_mean(aug, "augmented", "hit_cosine_only"),
                summary_recall_cosine_only=_mean(aug, "augmented", "summary_hit_cosine_only"),
                summary_verbatim=_mean(aug, "augmented", "summary_verbatim"),
                preference_in_summary_input=_mean(aug, "augmented", "preference_in_summary_input"),
                summary_seconds_mean=_mean(aug, "augmented", "summary_seconds", 1),
                failed_jobs=sum(r["augmented"]["summary_job"] != "succeeded" for r in aug),
            )
            # The two retrieval arms on exactly the questions the summary arm ran on (paired comparison).
            for arm in ("retrieval", "retrieval_small"):
                entry["augmented"][f"{arm}_recall_same_questions"] = _mean(aug, arm, "hit")
                entry["augmented"][f"{arm}_tokens_same_questions"] = _mean(aug, arm, "tokens", 1)
        out[str(n)] = entry
    return out


def report(by_n: dict[str, Any], k: int) -> None:
    small = math.ceil(k / 4)
    table = Table(title="PrefEval: the stated preference reaches the upstream prompt (recall / tokens added)")
    for col in (
        "N",
        f"retrieval k={k}",
        "tok",
        f"retrieval k={small}",
        "tok",
        "q (summary arm)",
        f"summary + {small}",
        "via item",
        "via summary (copy)",
        "(lenient)",
        "tok (summary+items)",
        f"k={k} same q",
        f"k={small} same q",
    ):
        table.add_column(col)
    nan = float("nan")
    for n, e in by_n.items():
        r, s = e.get("retrieval", {}), e.get("retrieval_small", {})
        a = e.get("augmented", {})
        table.add_row(
            n,
            f"{r.get('recall', nan):.3f} ({r.get('questions', 0)})",
            f"{r.get('tokens_mean', nan):.0f}",
            f"{s.get('recall', nan):.3f}",
            f"{s.get('tokens_mean', nan):.0f}",
            str(a.get("questions", 0)),
            f"{a.get('recall', nan):.3f}",
            f"{a.get('item_recall', nan):.3f}",
            f"{a.get('summary_recall', nan):.3f}",
            f"{a.get('summary_recall_lenient', nan):.3f}",
            f"{a.get('tokens_mean', nan):.0f} ({a.get('summary_tokens_mean', nan):.0f}+{a.get('item_tokens_mean', nan):.0f})",
            f"{a.get('retrieval_recall_same_questions', nan):.3f}",
            f"{a.get('retrieval_small_recall_same_questions', nan):.3f}",
        )
    console.print(table)


def plot(by_n: dict[str, Any], k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = math.ceil(k / 4)
    ns = [int(n) for n in by_n]
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(11, 4.2))

    def series(arm: str, key: str) -> list[float]:
        return [by_n[str(n)].get(arm, {}).get(key, float("nan")) for n in ns]

    ax.plot(ns, series("retrieval", "recall"), marker="o", label=f"retrieval only, k={k}")
    ax.plot(ns, series("retrieval_small", "recall"), marker="v", label=f"retrieval only, k={small}")
    aug_q = max((by_n[str(n)].get("augmented", {}).get("questions", 0) for n in ns), default=0)
    if aug_q:
        ax.plot(ns, series("augmented", "recall"), marker="s", label=f"summary + {small} items ({aug_q} q)")
        ax.plot(
            ns,
            series("augmented", "summary_recall"),
            marker="^",
            linestyle="--",
            label="…via the summary (copy judge)",
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("preference reaches the prompt")
    ax.set_title("Recall")

    tx.plot(ns, series("retrieval", "tokens_mean"), marker="o", label=f"retrieval only, k={k}")
    tx.plot(ns, series("retrieval_small", "tokens_mean"), marker="v", label=f"retrieval only, k={small}")
    if aug_q:
        tx.plot(ns, series("augmented", "tokens_mean"), marker="s", label=f"summary + {small} items")
        tx.plot(
            ns,
            series("augmented", "summary_tokens_mean"),
            marker="^",
            linestyle="--",
            label="…of which summary",
        )
    tx.set_ylim(bottom=0)
    tx.set_ylabel("tokens added (block incl. frame, est.)")
    tx.set_title("Tokens added to the prompt")
    for axis in (ax, tx):
        axis.set_xscale("symlog", linthresh=10)
        axis.set_xticks(ns)
        axis.set_xticklabels([str(n) for n in ns])
        axis.set_xlabel("unrelated turns between preference and question (N)")
        axis.legend(fontsize=8)
    fig.suptitle("PrefEval explicit preferences through Rapport memory (SmolLM2-135M writes the summaries)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
