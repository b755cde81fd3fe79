"""Memory bench output: the tables printed after a run and bench/results/memory.png (see bench/memory.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bench._common import RESULTS

console = Console()
# Users of the Chroma stores' retrieval rows (rows that say otherwise carry their own `users`).
USERS = 1000


def report(results: dict[str, Any]) -> None:
    table = Table(title="Memory: retrieval + composition (embed query, search, rank, compose)")
    cols = (
        "mode",
        "items",
        "users",
        "p50 ms",
        "p95 ms",
        "embed p50",
        "search p50",
        "cached-query p50/p95",
        "tokens added",
        "bulk load s",
    )
    for col in cols:
        table.add_column(col)
    for mode, by_size in results["retrieval"].items():
        for size, s in by_size.items():
            cached = s.get("cached_query")
            table.add_row(
                mode,
                size,
                str(s.get("users", USERS)),
                f"{s['p50_ms']:.1f}",
                f"{s['p95_ms']:.1f}",
                f"{s.get('embed_p50_ms', float('nan')):.1f}",
                f"{s.get('search_p50_ms', float('nan')):.1f}",
                f"{cached['p50_ms']:.1f} / {cached['p95_ms']:.1f}" if cached else "-",
                str(s["mean_tokens_added"]),
                str(s["bulk_load_s"]),
            )
            big = s.get("big_user")
            if big is not None:
                table.add_row(
                    f"{mode}: the big user",
                    str(s["big_user_items"]),
                    "1",
                    f"{big['p50_ms']:.1f}",
                    f"{big['p95_ms']:.1f}",
                    f"{big['embed_p50_ms']:.1f}",
                    f"{big['search_p50_ms']:.1f}",
                    "-",
                    str(big["mean_tokens_added"]),
                    "-",
                )
    console.print(table)
    pg = results.get("postgres")
    if pg:
        recall = Table(title="postgres: recall@10 of the per-user top-k against an exact scan")
        for col in ("ordinary items", "ordinary users (queries)", "recall", "big user queries", "big user recall"):
            recall.add_column(col)
        for size, point in pg.get("points", {}).items():
            r = point["recall"]
            recall.add_row(
                size,
                f"{r['ordinary_users']} ({r['ordinary_queries']})",
                str(r["ordinary_recall"]),
                str(r["big_user_queries"]),
                str(r["big_user_recall"]),
            )
        console.print(recall)
    ingest = Table(title="Memory: ingest (embed + durable write)")
    for col in ("store / embedding / callers", "items", "seconds", "items/s (median)", "runs", "mean batch"):
        ingest.add_column(col)
    for key, s in results["ingest"].items():
        ingest.add_row(
            key,
            str(s["items"]),
            str(s["seconds"]),
            str(s["items_per_s"]),
            ", ".join(map(str, s.get("runs_items_per_s", []))) or "-",
            str(s.get("mean_batch", "-")),
        )
    console.print(ingest)
    quality = Table(title="Embedding backends against the torch model (1000 ingest texts)")
    for col in ("backend", "mean cos", "min cos", "top-5 neighbour overlap"):
        quality.add_column(col)
    for backend, q in results.get("embedding_quality", {}).items():
        quality.add_row(backend, str(q["mean_cos"]), str(q["min_cos"]), str(q["top5_overlap"]))
    console.print(quality)
    lay = results["layout"]
    if lay is None:
        return
    layout = Table(title=f"Collection layout: {lay['items']} items, {lay['users']} users, top-20 query")
    for col in ("layout", "p50 ms", "p95 ms"):
        layout.add_column(col)
    for name in ("per_user", "shared"):
        layout.add_row(name, f"{lay[name]['p50_ms']:.2f}", f"{lay[name]['p95_ms']:.2f}")
    console.print(layout)


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for mode, by_size in results["retrieval"].items():
        sizes = sorted(int(s) for s in by_size)
        users = by_size[str(sizes[0])].get("users", USERS)
        label = f"{mode} ({users // 1000}k users)"
        (line,) = ax.plot(sizes, [by_size[str(s)]["p50_ms"] for s in sizes], marker="o", label=f"{label} p50")
        ax.plot(
            sizes,
            [by_size[str(s)]["p95_ms"] for s in sizes],
            marker="x",
            linestyle="--",
            color=line.get_color(),
            label=f"{label} p95",
        )
        if all("big_user" in by_size[str(s)] for s in sizes):
            ax.plot(
                sizes,
                [by_size[str(s)]["big_user"]["p50_ms"] for s in sizes],
                marker="s",
                linestyle=":",
                color=line.get_color(),
                label=f"{mode}: 100k-item user p50",
            )
    ax.axhline(15, color="grey", linewidth=0.8, linestyle=":")
    ax.axhline(30, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    # Log scale: the 100k-item user's hybrid search is ten times the rest, which a linear axis would flatten.
    ax.set_yscale("log")
    ax.set_xlabel("items stored")
    ax.set_ylabel("retrieval + composition (ms)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Rapport memory latency (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(RESULTS / "memory.png", dpi=120)
