"""The overhead bench's analysis and output: pooled percentiles, added latency, the goals, table and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MODES = ("non-stream", "stream")
# A cell is flagged when processes other than the bench used more than this share of the machine meanwhile.
FOREIGN_LOAD_FLAG = 0.15
COLORS = {
    "direct": "#7f7f7f",
    "direct-responses": "#bcbcbc",
    "rapport": "#1f77b4",
    "rapport-memory": "#2ca02c",
    "rapport-rpm": "#9467bd",
    "rapport-responses": "#8c564b",
    "rapport-responses-passthrough": "#e377c2",
    "rapport-httpx": "#17becf",
    "rapport-litellm": "#ff7f0e",
    "litellm-proxy": "#d62728",
}


def pct(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan")}
    arr = np.asarray(samples)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(arr.mean()), 3),
    }


def metrics_of(mode: str) -> tuple[str, ...]:
    return ("total_ms",) if mode == "non-stream" else ("ttfb_ms", "total_ms")


def _pooled(runs: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    served = sum(len(r["total_ms"]) for r in runs)
    entry: dict[str, Any] = {
        "requests": served,
        "errors": sum(r["errors"] for r in runs),
        "rps": round(served / max(1e-9, sum(r["wall_s"] for r in runs)), 1),
        "rps_per_round": [round(len(r["total_ms"]) / max(1e-9, r["wall_s"]), 1) for r in runs],
        "load_per_round": [r["load"] for r in runs],
        "under_load": any(r["load"]["foreign_cpu_share"] > FOREIGN_LOAD_FLAG for r in runs),
    }
    cpu = [r["cpu_ms_per_request"]["server"] for r in runs if "server" in r["cpu_ms_per_request"]]
    if cpu:
        entry["server_cpu_ms_per_request"] = round(float(np.mean(cpu)), 3)
    entry["upstream_cpu_ms_per_request"] = round(
        float(np.mean([r["cpu_ms_per_request"]["upstream"] for r in runs])), 3
    )
    if any(r["error_samples"] for r in runs):
        entry["error_samples"] = [e for r in runs for e in r["error_samples"]][:3]
    for metric in metrics_of(mode):
        entry[metric] = pct([x for r in runs for x in r[metric]])
        entry[metric]["p50_per_round"] = [pct(r[metric])["p50"] for r in runs]
    return entry


def summarize(
    raw: dict[str, dict[str, dict[int, list[dict[str, Any]]]]], baselines: dict[str, str]
) -> dict[str, Any]:
    """Pool each (row, mode, concurrency) over the rounds; added = the row's percentile - its baseline's."""
    stats: dict[str, Any] = {}
    for name, modes in raw.items():
        for mode, levels in modes.items():
            for conc, runs in levels.items():
                stats.setdefault(name, {}).setdefault(mode, {})[str(conc)] = _pooled(runs, mode)
    added: dict[str, Any] = {}
    for name, base_name in baselines.items():
        if name not in stats or base_name not in stats:
            continue
        for mode, levels in stats[name].items():
            for conc, entry in levels.items():
                base = stats[base_name][mode][conc]
                row: dict[str, Any] = {
                    "baseline": base_name,
                    "rps": entry["rps"],
                    "baseline_rps": base["rps"],
                    "server_cpu_ms_per_request": entry.get("server_cpu_ms_per_request"),
                    "errors": entry["errors"],
                    "under_load": entry["under_load"] or base["under_load"],
                }
                for metric in metrics_of(mode):
                    key = metric.removesuffix("_ms")
                    row[key] = {
                        q: round(entry[metric][q] - base[metric][q], 3) for q in ("p50", "p95", "p99")
                    }
                    row[key]["p50_per_round"] = [
                        round(a - b, 3)
                        for a, b in zip(
                            entry[metric]["p50_per_round"], base[metric]["p50_per_round"], strict=False
                        )
                    ]
                added.setdefault(name, {}).setdefault(mode, {})[conc] = row
    return {"stats": stats, "added": added}


def _under(rows: dict[str, Any], limit_ms: float) -> dict[str, Any]:
    return {
        "non-stream": {
            "added_p50_ms": rows["non-stream"]["1"]["total"]["p50"],
            "met": rows["non-stream"]["1"]["total"]["p50"] < limit_ms,
        },
        "stream_ttfb": {
            "added_p50_ms": rows["stream"]["1"]["ttfb"]["p50"],
            "met": rows["stream"]["1"]["ttfb"]["p50"] < limit_ms,
        },
    }


def goals(added: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    """The issue's goals: personalization off added p50 < 2 ms at c=1 and below LiteLLM's proxy at every
    concurrency; memory on added p50 < 20 ms at c=1."""
    out: dict[str, Any] = {}
    has_c1 = 1 in levels
    if "rapport" in added:
        mine: dict[str, Any] = {}
        if has_c1:
            mine["added_p50_under_2ms_at_c1"] = _under(added["rapport"], 2.0)
        if "litellm-proxy" in added:
            r, peer = added["rapport"], added["litellm-proxy"]
            below: dict[str, Any] = {}
            for c in levels:
                k = str(c)
                for label, mode, metric in (
                    ("non-stream", "non-stream", "total"),
                    ("stream-ttfb", "stream", "ttfb"),
                    ("stream-total", "stream", "total"),
                ):
                    a, b = r[mode][k][metric]["p50"], peer[mode][k][metric]["p50"]
                    below[f"{label}/c{c}"] = {"rapport_ms": a, "litellm_proxy_ms": b, "met": a < b}
            mine["added_p50_below_litellm_proxy"] = below
        out["rapport (personalization off)"] = mine
    if "rapport-memory" in added and has_c1:
        out["rapport-memory"] = {"added_p50_under_20ms_at_c1": _under(added["rapport-memory"], 20.0)}
    return out


def _fmt(d: dict[str, float]) -> str:
    return f"{d['p50']:.2f} / {d['p95']:.2f} / {d['p99']:.2f}"


def print_table(summary: dict[str, Any], levels: list[int], unavailable: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Added latency over calling the upstream directly (ms; p50 / p95 / p99) and throughput"
    )
    for col in (
        "row",
        "baseline",
        "mode",
        "conc",
        "added (non-stream or TTFB)",
        "added stream total",
        "req/s",
        "baseline req/s",
        "server CPU ms/req",
        "errors",
        "load",
    ):
        table.add_column(col, justify="left" if col in ("row", "baseline", "mode") else "right")
    for name, modes in summary["added"].items():
        for mode in MODES:
            for c in levels:
                row = modes.get(mode, {}).get(str(c))
                if row is None:
                    continue
                first = row["total"] if mode == "non-stream" else row["ttfb"]
                cpu = row["server_cpu_ms_per_request"]
                table.add_row(
                    name,
                    row["baseline"],
                    mode,
                    str(c),
                    _fmt(first),
                    _fmt(row["total"]) if mode == "stream" else "-",
                    f"{row['rps']:.0f}",
                    f"{row['baseline_rps']:.0f}",
                    "-" if cpu is None else f"{cpu:.2f}",
                    str(row["errors"]),
                    "LOADED" if row["under_load"] else "quiet",
                )
    for name, why in unavailable.items():
        table.add_row(name, "-", "-", "-", "not available", why[:60], "-", "-", "-", "-", "-")
    Console(width=200).print(table)


def plot(summary: dict[str, Any], levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("non-stream", "total", "non-stream: added p50"),
        ("stream", "ttfb", "stream: added p50 TTFB"),
        ("stream", "total", "stream: added p50 total"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    names = list(summary["added"])
    width = 0.8 / max(1, len(names))
    x = np.arange(len(levels))
    for ax, (mode, metric, title) in zip(axes, panels, strict=False):
        for i, name in enumerate(names):
            vals = [summary["added"][name][mode][str(c)][metric]["p50"] for c in levels]
            ax.bar(x + i * width, vals, width, label=name, color=COLORS.get(name))
        ax.axhline(2.0, color="grey", linestyle="--", linewidth=0.8)
        ax.axhline(20.0, color="green", linestyle=":", linewidth=0.8)
        ax.set_xticks(x + width * (len(names) - 1) / 2, [f"c={c}" for c in levels])
        ax.set_title(title)
        ax.set_ylabel("ms")
        ax.set_yscale("symlog", linthresh=1.0)
    ax = axes[3]
    shown = [n for n in summary["stats"] if "non-stream" in summary["stats"][n]]
    width = 0.8 / max(1, len(shown))
    for i, name in enumerate(shown):
        vals = [summary["stats"][name]["non-stream"][str(c)]["rps"] for c in levels]
        ax.bar(x + i * width, vals, width, label=name, color=COLORS.get(name))
    ax.set_xticks(x + width * (len(shown) - 1) / 2, [f"c={c}" for c in levels])
    ax.set_title("non-stream throughput (req/s)")
    ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    ax.legend(fontsize=7)
    fig.suptitle(
        "Rapport vs LiteLLM proxy over one fake upstream (dashed: 2 ms goal, personalization off; "
        "dotted: 20 ms goal, memory on)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


README_BEGIN = "<!-- overhead-table:begin -->"
README_END = "<!-- overhead-table:end -->"


def readme_table(result: dict[str, Any], levels: list[int]) -> str:
    lines = [
        README_BEGIN,
        f"Measured {result['when']} ({result['machine']['cpus']} CPUs, {result['setup']['rounds']} rounds; "
        "added latency = row percentile minus its baseline's, ms; req/s = throughput at that concurrency).",
        "",
        "| row | mode | conc | added p50 | added p95 | added p99 | stream total added p50 | req/s (baseline) "
        "| server CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, modes in result["added"].items():
        for mode in MODES:
            for c in levels:
                row = modes[mode][str(c)]
                first = row["total"] if mode == "non-stream" else row["ttfb"]
                label = "non-stream" if mode == "non-stream" else "stream TTFB"
                total = f"{row['total']['p50']:.2f}" if mode == "stream" else "-"
                cpu = row["server_cpu_ms_per_request"]
                lines.append(
                    f"| {name} | {label} | {c} | {first['p50']:.2f} | {first['p95']:.2f} | {first['p99']:.2f} | "
                    f"{total} | {row['rps']:.0f} ({row['baseline_rps']:.0f}) | {'-' if cpu is None else f'{cpu:.2f}'} |"
                )
    for name, why in result.get("not_available", {}).items():
        lines.append(f"| {name} | not available: {why} | | | | | | | |")
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(readme: Path, result: dict[str, Any], levels: list[int]) -> None:
    """Replace only the marked table inside README's Benchmarks section (opt-in: `--readme`)."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        print("README has no overhead-table markers; table not written")
        return
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + readme_table(result, levels) + tail)
