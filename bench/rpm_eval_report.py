"""Aggregation, table and plot for bench/rpm_eval.py (kept apart to keep each module small).

Input: the per-query records of every finished user (one JSON line per user in the answers log).
MAE comes with a 95% interval from a bootstrap over *users* (queries of one user share their rule and
their history, so they are not independent), and with the paired difference to `none` the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console(width=200)

LABELS = {
    "none": "none (query only)",
    "text": "text top-k retrieval",
    "memory": "memory (summary-augmented)",
    "rpm_llm": "RPM (LLM features)",
    "rpm_cheap": "RPM (cheap mode)",
    "ref_mean": "ref: user's mean rating (no LLM)",
    "ref_text": "ref: mean of text top-k ratings (no LLM)",
    "ref_rpm_cheap": "ref: mean of RPM-cheap top-k ratings (no LLM)",
    "ref_rpm_llm": "ref: mean of RPM-LLM top-k ratings (no LLM)",
}
BOOTSTRAP = 2000


def _per_user(users: list[dict[str, Any]], method: str) -> list[list[dict[str, Any]]]:
    return [[q for q in u["queries"] if q["method"] == method] for u in users]


def _boot(groups: list[np.ndarray], seed: int) -> tuple[float, float]:
    """95% percentile interval of the pooled mean, resampling whole users."""
    groups = [g for g in groups if len(g)]
    if len(groups) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(groups), len(groups))
        means.append(float(np.concatenate([groups[i] for i in pick]).mean()))
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 1) if values else None


def aggregate(users: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    base = {(q["user"], q["query"]): q for u in users for q in u["queries"] if q["method"] == "none"}
    out: list[dict[str, Any]] = []
    for n, method in enumerate(methods):
        groups = _per_user(users, method)
        flat = [q for g in groups for q in g]
        if not flat:
            continue
        errors = np.array([q["error"] for q in flat], dtype=float)
        lo, hi = _boot([np.array([q["error"] for q in g], dtype=float) for g in groups], seed=n)
        rec: dict[str, Any] = {
            "method": method,
            "label": LABELS.get(method, method),
            "n": len(flat),
            "users": sum(1 for g in groups if g),
            "mae": round(float(errors.mean()), 3),
            "se": round(float(errors.std(ddof=1) / np.sqrt(len(errors))), 3) if len(errors) > 1 else None,
            "ci95": [round(lo, 3), round(hi, 3)],
            "exact": round(float(np.mean(errors == 0)), 3),
        }
        if not method.startswith("ref_"):
            paired = [
                [
                    q["error"] - base[(q["user"], q["query"])]["error"]
                    for q in g
                    if (q["user"], q["query"]) in base
                ]
                for g in groups
            ]
            flat_d = [d for g in paired for d in g]
            if method != "none" and flat_d:
                dlo, dhi = _boot([np.array(g, dtype=float) for g in paired], seed=100 + n)
                rec["delta_vs_none"] = round(float(np.mean(flat_d)), 3)
                rec["delta_ci95"] = [round(dlo, 3), round(dhi, 3)]
            added = [
                q["prompt_tokens"] - base[(q["user"], q["query"])]["prompt_tokens"]
                for q in flat
                if (q["user"], q["query"]) in base
            ]
            builds = [u["builds"].get(method, {}) for u in users if method in u["builds"]]
            rec.update(
                parse_failures=sum(1 for q in flat if q["parsed"] is None),
                unresolved=sum(1 for q in flat if q["guess"] is None),
                prompt_tokens_added=_mean(added) if added else 0.0,
                prep_ms=_mean([q["prep_ms"] for q in flat]),
                answer_ms=_mean([q["answer_ms"] for q in flat]),
                build_s=round(sum(b.get("build_s", 0.0) for b in builds), 1),
                build_llm_calls=sum(b.get("build_llm_calls", 0) for b in builds),
            )
            notes: dict[str, Any] = {}
            for b in builds:
                for key, value in (b.get("report") or {}).items():
                    if isinstance(value, int | float):
                        notes[key] = notes.get(key, 0) + value
            if notes:
                rec["build_report"] = notes
        out.append(rec)
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| method | MAE [95% CI] | Δ vs none [95% CI] | exact | parse fail | prompt tokens added | prep ms "
        "| answer ms | build s | build LLM calls |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        ci = f"{r['mae']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
        delta = (
            f"{r['delta_vs_none']:+.2f} [{r['delta_ci95'][0]:+.2f}, {r['delta_ci95'][1]:+.2f}]"
            if "delta_vs_none" in r
            else "-"
        )
        fail = f"{r['parse_failures']}/{r['n']}" if "parse_failures" in r else "-"
        lines.append(
            f"| {r['label']} | {ci} | {delta} | {r['exact']:.0%} | {fail} | {_fmt(r.get('prompt_tokens_added'))} "
            f"| {_fmt(r.get('prep_ms'))} | {_fmt(r.get('answer_ms'))} | {_fmt(r.get('build_s'))} "
            f"| {_fmt(r.get('build_llm_calls'))} |"
        )
    return "\n".join(lines)


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    cols = (
        "method",
        "MAE [95% CI]",
        "Δ vs none",
        "exact",
        "parse fail",
        "+prompt tok",
        "prep ms",
        "answer ms",
        "build s",
        "build calls",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            r["label"],
            f"{r['mae']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
            f"{r['delta_vs_none']:+.2f}" if "delta_vs_none" in r else "-",
            f"{r['exact']:.0%}",
            f"{r['parse_failures']}/{r['n']}" if "parse_failures" in r else "-",
            _fmt(r.get("prompt_tokens_added")),
            _fmt(r.get("prep_ms")),
            _fmt(r.get("answer_ms")),
            _fmt(r.get("build_s")),
            _fmt(r.get("build_llm_calls")),
        )
    console.print(table)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    labels = [r["label"] for r in rows]
    maes = np.array([r["mae"] for r in rows])
    lo = maes - np.array([r["ci95"][0] for r in rows])
    hi = np.array([r["ci95"][1] for r in rows]) - maes
    colors = ["#a5a5a5" if r["method"].startswith("ref_") else "#4472c4" for r in rows]
    ax.barh(labels, maes, xerr=np.nan_to_num(np.vstack([lo, hi])), color=colors, capsize=3)
    ax.set_xlabel("MAE on held-out 1-5 ratings (lower is better; bars: 95% CI, bootstrap over users)")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_answers(path: Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished users from an answers log written with the same settings (other settings are ignored)."""
    if not path.exists():
        return []
    users = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("key") == key:
                users.append(rec)
    return users
