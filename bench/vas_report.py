"""Tables (rich) and the README plot for bench/vas.py results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REWARDS = ["conciseness", "readability", "sentiment", "formality"]


def _pm(row: dict[str, Any]) -> str:
    return f"{row['mean_reward']:.3f} ± {row['sem']:.3f}"


def _diff(row: dict[str, Any]) -> str:
    if "diff_vs_baseline" not in row:
        return "-"
    return f"{row['diff_vs_baseline']:+.3f} ± {row['diff_sem']:.3f} (p={row['wilcoxon_p_greater']:.3g})"


def print_tables(results: dict[str, Any]) -> None:
    console = Console(width=170)
    if "beta_sweep" in results:
        t = Table(
            "reward",
            "beta",
            "mean reward ± sem",
            "paired diff vs beta 0 (Wilcoxon p, >)",
            "s/answer",
            "value ms/answer",
            title="token-level VAS vs beta (held-out prompts)",
        )
        for r in results["beta_sweep"]:
            t.add_row(
                r["reward"], f"{r['beta']:g}", _pm(r), _diff(r), f"{r['wall_s']:.1f}", f"{r['value_ms']:.0f}"
            )
        console.print(t)
    if "budget" in results:
        t = Table(
            "reward",
            "method",
            "base tokens",
            "mean reward ± sem",
            "paired diff vs 1 sample (p, >)",
            title="VAS vs Best-of-N at equal base-model tokens",
        )
        for r in results["budget"]:
            t.add_row(r["reward"], r["method"], f"{r['base_tokens']:.1f}", _pm(r), _diff(r))
        console.print(t)
    if "tokenizer" in results and "rows" in results["tokenizer"]:
        tk = results["tokenizer"]
        t = Table(
            "path",
            "ms/step",
            "value tokens/step",
            "re-run tokens/step",
            "mean |dV| (centred)",
            "max |dV|",
            "mean TV",
            "argmax changed",
            title=f"tokenizer paths, {tk['steps']} replayed steps, beta {tk['beta']:g}",
        )
        for r in tk["rows"]:
            t.add_row(
                r["path"],
                f"{r['ms_per_step']:.0f}",
                f"{r['value_tokens_per_step']:.1f}",
                f"{r['rerun_tokens_per_step']:.2f}",
                f"{r['mean_abs_centred_value_diff']:.2e}",
                f"{r['max_abs_centred_value_diff']:.2e}",
                f"{r['mean_tv_distance']:.3f}",
                f"{100 * r['argmax_changed_share']:.1f}%",
            )
        console.print(t)
    for tag, cost in results.get("cost", {}).items():
        t = Table(
            "method",
            "backend",
            "mean reward",
            "base tokens",
            "upstream calls",
            "value calls",
            "upstream s",
            "value s",
            "s/answer",
            title=f"cost per answer ({cost['reward']}, {cost['prompts']} prompts, {tag})",
        )
        for r in cost["rows"]:
            t.add_row(
                r["label"],
                r["backend"],
                f"{r['mean_reward']:.3f}",
                f"{r['base_tokens']:.1f}",
                f"{r['upstream_calls']:.1f}",
                f"{r['value_calls']:.1f}",
                f"{r['upstream_ms'] / 1000:.2f}",
                f"{r['value_ms'] / 1000:.2f}",
                f"{r['wall_s']:.2f}",
            )
        console.print(t)
        if cost.get("vllm_vs_torch"):
            console.print(f"vLLM vs torch, same model: {cost['vllm_vs_torch']}")
    for tag, cost in results.get("llama_cost", {}).items():
        console.print(_llama_table(tag, cost))
        if cost.get("bf16_vs_fp32"):
            console.print(f"bfloat16 vs float32 values, same model: {cost['bf16_vs_fp32']}")
    console.print(f"load averages: {results.get('load')}")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _llama_table(tag: str, cost: dict[str, Any]) -> Table:
    t = Table("method", "base", "value", "base tokens", "value pass ms p50 (cpu)", "base step ms p50 (cpu)",
              "sample call ms p50", "s/answer (cpu)", "s per 100 steps", "mean reward",
              title=f"cost per answer, in-process llama.cpp base vs HTTP ({cost['reward']}, {cost['prompts']} "
                    f"prompts, k={cost['top_k']}, {cost['max_tokens']} tokens, {tag}); goals {cost['goals']}")
    for r in cost["rows"]:
        t.add_row(r["label"], r["base"], r["value_dtype"], f"{r['base_tokens']:.0f}",
                  f"{_ms(r['value_pass_wall_ms_p50'])} ({_ms(r['value_pass_cpu_ms_p50'])})",
                  f"{_ms(r['base_step_wall_ms_p50'])} ({_ms(r['base_step_cpu_ms_p50'])})",
                  _ms(r["sample_call_wall_ms_p50"]), f"{r['wall_s']:.2f} ({r['cpu_s']:.2f})",
                  _s(r["s_per_100_steps"]), f"{r['mean_reward']:.3f}")
    return t


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 4, figsize=(21, 8.5))
    axes = list(grid.flat)
    ax = axes[0]
    for name in REWARDS:
        rows = [r for r in results["beta_sweep"] if r["reward"] == name]
        ax.errorbar(
            [r["beta"] for r in rows],
            [r.get("diff_vs_baseline", 0.0) for r in rows],
            [r.get("diff_sem", 0.0) for r in rows],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("beta")
    ax.set_ylabel("reward gain over beta 0 (paired, ± sem)")
    ax.set_title("token-level VAS: gain vs beta")
    ax.legend(fontsize=8)
    styles = {
        "best": ("s", "tab:blue"),
        "block": ("o", "tab:red"),
        "oracle": ("x", "grey"),
        "sample": ("D", "black"),
        "token": ("^", "tab:green"),
    }
    for ax, name in zip(axes[1:5], REWARDS, strict=True):
        series: dict[str, list[tuple[float, float, float]]] = {}
        for r in results["budget"]:
            if r["reward"] != name:
                continue
            kind = "oracle" if "oracle" in r["method"] else r["method"].split()[0].split("-")[0]
            series.setdefault(kind, []).append((r["base_tokens"], r["mean_reward"], r["sem"]))
        series["best"] = series.get("sample", []) + series.get("best", [])
        series["block"] = series.get("sample", []) + series.get("block", [])
        series["token"] = [
            (r["base_tokens"], r["mean_reward"], r["sem"])
            for r in results["beta_sweep"]
            if r["reward"] == name and r["beta"] == max(x["beta"] for x in results["beta_sweep"])
        ]
        labels = {
            "best": "Best-of-N (value model)",
            "block": "block VAS (argmax)",
            "oracle": "Best-of-N, true reward",
            "sample": "one sample",
            "token": "token VAS, top beta",
        }
        for kind, pts in series.items():
            if not pts:
                continue
            pts.sort()
            marker, color = styles.get(kind, ("o", None))
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                [p[2] for p in pts],
                marker=marker,
                color=color,
                capsize=3,
                label=labels.get(kind, kind),
                ls="-" if kind in {"best", "block"} else "none",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("base-model tokens per answer")
        ax.set_ylabel(f"mean {name} reward")
        ax.set_title(f"{name}: reward vs compute")
    axes[1].legend(fontsize=7)
    _cost_panel(axes[5], results)
    _llama_step_panel(axes[6], results)
    _llama_answer_panel(axes[7], results)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cost_panel(ax: Any, results: dict[str, Any]) -> None:
    """Seconds per answer, split into upstream and value-model time, for each method and backend."""
    cost = results.get("cost", {})
    tag = "quiet" if "quiet" in cost else next(iter(cost), None)
    if tag is None:
        ax.set_axis_off()
        return
    rows = cost[tag]["rows"]
    labels = [f"{r['label']}\n{r['backend']}" for r in rows]
    up = [r["upstream_ms"] / 1000 for r in rows]
    val = [r["value_ms"] / 1000 for r in rows]
    wall = [r["wall_s"] for r in rows]
    ys = list(range(len(rows)))
    ax.barh(ys, up, color="tab:grey", label="upstream (summed)")
    ax.barh(ys, val, left=up, color="tab:orange", label="value model")
    ax.plot(wall, ys, "k|", markersize=14, label="wall")
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per answer")
    ax.set_title(f"cost per answer ({cost[tag]['reward']}, {tag} machine)")
    ax.legend(fontsize=7)


def _llama_cost(results: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    cost = results.get("llama_cost", {})
    tag = "quiet" if "quiet" in cost else next(reversed(cost), None)  # else the latest run
    return None if tag is None else (tag, cost[tag])


def _llama_label(r: dict[str, Any]) -> str:
    value = "" if r["value_dtype"] == "-" else f", {r['value_dtype']}"
    return f"{r['label']}\n{r['base']}{value}"


def _llama_step_panel(ax: Any, results: dict[str, Any]) -> None:
    """Per-step p50 of the base step and the value pass (wall), against the issue's goals."""
    found = _llama_cost(results)
    if found is None:
        ax.set_axis_off()
        return
    tag, cost = found
    rows = [r for r in cost["rows"] if r["base_step_wall_ms_p50"] is not None]
    ys = list(range(len(rows)))
    base = [r["base_step_wall_ms_p50"] or 0.0 for r in rows]
    value = [r["value_pass_wall_ms_p50"] or 0.0 for r in rows]
    ax.barh([y - 0.2 for y in ys], base, height=0.4, color="tab:grey", label="base step (top-k), p50")
    ax.barh([y + 0.2 for y in ys], value, height=0.4, color="tab:orange", label="value pass, p50")
    ax.axvline(cost["goals"]["base_ms"], color="tab:grey", ls="--", lw=0.8, label="goals")
    ax.axvline(cost["goals"]["value_ms"], color="tab:orange", ls="--", lw=0.8)
    ax.set_yticks(ys, [_llama_label(r) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per token step (wall)")
    ax.set_title(f"token step cost, k={cost['top_k']} ({tag} machine)")
    ax.legend(fontsize=7)


def _llama_answer_panel(ax: Any, results: dict[str, Any]) -> None:
    found = _llama_cost(results)
    if found is None:
        ax.set_axis_off()
        return
    tag, cost = found
    rows = cost["rows"]
    ys = list(range(len(rows)))
    ax.barh(ys, [r["wall_s"] for r in rows], color="tab:blue", label="wall")
    ax.plot([r["cpu_s"] for r in rows], ys, "k|", markersize=14, label="CPU of this process")
    ax.axvline(cost["goals"]["token_answer_s"], color="tab:red", ls="--", lw=0.8, label="goal (token level)")
    ax.set_yticks(ys, [f"{_llama_label(r)} ({r['base_tokens']:.0f} base tok)" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per answer")
    ax.set_title(f"answer cost, {cost['max_tokens']} tokens max ({tag} machine)")
    ax.legend(fontsize=7)


def markdown(results: dict[str, Any]) -> str:
    """The README tables, from the results JSON (`python -m bench.vas_report` prints them)."""
    out: list[str] = []
    if "beta_sweep" in results:
        betas = sorted({r["beta"] for r in results["beta_sweep"]})
        out.append("| reward | " + " | ".join(f"beta {b:g}" for b in betas) + " | words/answer (beta 0 -> top) |")
        out.append("| --- |" + " --- |" * (len(betas) + 1))
        for name in REWARDS:
            rows = {r["beta"]: r for r in results["beta_sweep"] if r["reward"] == name}
            cells = []
            for b in betas:
                r = rows[b]
                cell = f"{r['mean_reward']:.3f} ± {r['sem']:.3f}"
                if "diff_vs_baseline" in r:
                    cell += f" ({r['diff_vs_baseline']:+.3f} ± {r['diff_sem']:.3f}, p={r['wilcoxon_p_greater']:.2g})"
                cells.append(cell)
            words = f"{rows[betas[0]].get('mean_words', 0):.1f} -> {rows[betas[-1]].get('mean_words', 0):.1f}"
            out.append(f"| {name} | " + " | ".join(cells) + f" | {words} |")
        out.append("")
    if "budget" in results:
        methods = list(dict.fromkeys(r["method"] for r in results["budget"]))
        out.append("| method | base tokens | " + " | ".join(REWARDS) + " |")
        out.append("| --- | --- |" + " --- |" * len(REWARDS))
        for m in methods:
            rows = {r["reward"]: r for r in results["budget"] if r["method"] == m}
            tokens = sum(r["base_tokens"] for r in rows.values()) / len(rows)
            cells = []
            for name in REWARDS:
                r = rows[name]
                cell = f"{r['mean_reward']:.3f} ± {r['sem']:.3f}"
                if "diff_vs_baseline" in r:
                    cell += f" ({r['diff_vs_baseline']:+.3f}, p={r['wilcoxon_p_greater']:.2g})"
                cells.append(cell)
            out.append(f"| {m} | {tokens:.1f} | " + " | ".join(cells) + " |")
        out.append("")
    if "tokenizer" in results and "rows" in results["tokenizer"]:
        out.append("| value path | ms/step | value tokens run/step | re-run tokens/step | mean / max abs diff of "
                   "centred V | mean TV distance of the step distribution | top candidate changed |")
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        for r in results["tokenizer"]["rows"]:
            out.append(f"| {r['path']} | {r['ms_per_step']:.0f} | {r['value_tokens_per_step']:.1f} | "
                       f"{r['rerun_tokens_per_step']:.2f} | {r['mean_abs_centred_value_diff']:.2g} / "
                       f"{r['max_abs_centred_value_diff']:.2g} | {r['mean_tv_distance']:.3f} | "
                       f"{100 * r['argmax_changed_share']:.1f}% |")
        out.append("")
    for tag, cost in results.get("cost", {}).items():
        out.append(f"Cost per answer ({cost['reward']}, {cost['prompts']} prompts, {tag}):")
        out.append("")
        out.append("| method | value backend | base tokens | upstream calls | value calls | upstream s | value s "
                   "| s/answer |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in cost["rows"]:
            out.append(f"| {r['label']} | {r['backend']} | {r['base_tokens']:.0f} | {r['upstream_calls']:.1f} | "
                       f"{r['value_calls']:.1f} | {r['upstream_ms'] / 1000:.2f} | {r['value_ms'] / 1000:.2f} | "
                       f"{r['wall_s']:.2f} |")
        out.append("")
    for tag, cost in results.get("llama_cost", {}).items():
        out.append(f"Cost per answer, in-process llama.cpp base ({cost['reward']}, {cost['prompts']} prompts, "
                   f"k={cost['top_k']}, {cost['max_tokens']} tokens max, {tag}):")
        out.append("")
        out.append("| method | base | value model | base tokens | value pass ms p50 (CPU) | base step ms p50 (CPU) "
                   "| s/answer (CPU) | s per 100 steps |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in cost["rows"]:
            out.append(f"| {r['label']} | {r['base']} | {r['value_dtype']} | {r['base_tokens']:.0f} | "
                       f"{_ms(r['value_pass_wall_ms_p50'])} ({_ms(r['value_pass_cpu_ms_p50'])}) | "
                       f"{_ms(r['base_step_wall_ms_p50'])} ({_ms(r['base_step_cpu_ms_p50'])}) | "
                       f"{r['wall_s']:.2f} ({r['cpu_s']:.2f}) | {_s(r['s_per_100_steps'])} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import json

    _results = json.loads((Path(__file__).resolve().parent / "results" / "vas.json").read_text())
    print(markdown(_results))
