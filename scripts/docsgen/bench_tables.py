"""Benchmark tables for the docs, rendered from bench/results/*.json (the files the bench scripts write).

One renderer per results file; each returns a Markdown fragment that a hand-written page includes, so the prose
around a number is written once and the number itself always comes from the results of the code that ships.
A results file that is missing, or lacks a part, renders as a line saying so instead of failing the build."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Plots the pages show; copied from bench/results/ into docs/assets/bench/ at build time.
PLOTS = (
    "overhead.png", "memory.png", "locomo_recall.png", "locomo_recall_postgres.png", "prefeval_recall.png", "rpm_eval.png", "vas.png",
    "replica_rss.png",
)

Renderer = Callable[[dict[str, Any]], str]


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    marks = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in marks]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _load_note(data: dict[str, Any]) -> str:
    before = data.get("loadavg_before") or (data.get("machine") or {}).get("loadavg_before")
    after = data.get("loadavg_after") or (data.get("machine") or {}).get("loadavg_after")
    if not before:
        return ""
    text = f"Load average (1 min) {float(before[0]):.1f} before the run"
    if after:
        text += f", {float(after[0]):.1f} after"
    return text + ".\n"


def locomo_recall(data: dict[str, Any]) -> str:
    rows = []
    for arm, parts in data["report"].items():
        answerable = parts["all"]["1-4"]
        every = parts["all"]["all"]
        rows.append([
            f"`{arm}`", _pct(answerable["all_evidence"]), _pct(answerable["evidence_turns"]),
            _num(answerable["tokens_mean"], 0), _pct(every["all_evidence"]),
            _num(answerable.get("retrieval_ms_p50")), _num(answerable.get("retrieval_ms_p95")),
        ])
    questions = next(iter(data["report"].values()))["all"]["1-4"]["questions"]
    head = (f"LoCoMo development set, conversations {', '.join(data['config']['conversations'])}; "
            f"{questions} answerable (category 1-4) questions.\n\n")
    return head + _table(
        ["arm", "all evidence in prompt (1-4)", "evidence turns (1-4)", "memory tokens", "all evidence (all)",
         "retrieval p50 ms", "p95 ms"], rows) + "\n" + _load_note(data)


def memory_retrieval(data: dict[str, Any]) -> str:
    rows = []
    for store, sizes in data["retrieval"].items():
        for size, r in sorted(sizes.items(), key=lambda kv: int(kv[0])):
            rows.append([f"`{store}`", _num(int(size)), _num(r.get("p50_ms")), _num(r.get("p95_ms")),
                         _num(r.get("embed_p50_ms")), _num(r.get("search_p50_ms")),
                         _num((r.get("cached_query") or {}).get("p50_ms"))])
    return _table(["store / query embedding", "items", "p50 ms", "p95 ms", "embed p50", "search p50",
                   "p50, cached query"], rows)


def memory_ingest(data: dict[str, Any]) -> str:
    rows = []
    for name, r in data["ingest"].items():
        rows.append([f"`{name}`", _num(r["concurrency"]), _num(r["items"]), _num(r["items_per_s"]),
                     _num(r.get("mean_batch")), "yes" if r.get("staged_writes") else "no"])
    return _table(["store / embedder / callers", "callers", "items", "items/s", "mean batch", "staged"], rows)


def soak(data: dict[str, Any]) -> str:
    lat = data.get("latency_ms", {})
    rows = [
        ["duration", f"{_num(data['duration_s'], 0)} s at concurrency {data['concurrency']}, {data['users']} users"],
        ["requests", f"{_num(data['requests_served'])} ({_num(data['throughput_rps'])}/s)"],
        ["5xx / transport errors", f"{data['errors_5xx']} / {data['transport_errors']}"],
        ["items written / expected", f"{_num(data['items_written'])} / {_num(data['items_expected'])}"],
        ["latency p50 / p95 / p99", f"{_num(lat.get('p50'), 0)} / {_num(lat.get('p95'), 0)} / {_num(lat.get('p99'), 0)} ms"],
        ["RSS warm -> end", f"{_num(data['rss_start_mb'], 0)} -> {_num(data['rss_end_mb'], 0)} MB "
                            f"({_num(data['rss_growth_pct'])}%)"],
    ]
    return _table(["", "result"], rows, "ll") + "\n" + _load_note(data)


def prefeval(data: dict[str, Any]) -> str:
    arms: list[str] = []
    for row in data["by_n"].values():
        for arm in row:
            if isinstance(row[arm], dict) and "recall" in row[arm] and arm not in arms:
                arms.append(arm)
    rows = []
    for n, row in sorted(data["by_n"].items(), key=lambda kv: int(kv[0])):
        cells = [n]
        for arm in arms:
            r = row.get(arm)
            cells.append("-" if not isinstance(r, dict) else f"{_num(r.get('recall'), 3)} ({_num(r.get('tokens_mean'), 0)} tok)")
        rows.append(cells)
    return _table(["N turns between"] + [f"`{a}` recall (tokens)" for a in arms], rows) + "\n" + _load_note(data)


def rpm_eval(data: dict[str, Any]) -> str:
    rows = [[r["label"], _num(r["n"]), _num(r["mae"], 3), f"[{_num(r['ci95'][0], 3)}, {_num(r['ci95'][1], 3)}]",
             _num(r.get("exact"), 3), _num(r.get("prompt_tokens_added"), 0)] for r in data["results"]]
    return _table(["method", "queries", "MAE", "95% CI", "exact", "prompt tokens added"], rows) + "\n" + _load_note(data)


def vas_cost(data: dict[str, Any]) -> str:
    out = []
    for name, section in data["cost"].items():
        if not isinstance(section, dict) or "rows" not in section:
            continue
        rows = [[r["label"], r.get("backend", "-"), _num(r.get("wall_s"), 2), _num(r.get("base_tokens"), 0),
                 _num(r.get("upstream_calls"), 0), _num(r.get("value_calls"), 0),
                 _num(r.get("mean_reward"), 3)] for r in section["rows"]]
        out.append(f"`{name}` ({section.get('prompts', '?')} prompts, reward `{section.get('reward', '?')}`):\n\n"
                   + _table(["method", "value backend", "s per answer", "base tokens", "upstream calls",
                             "value passes", "mean reward"], rows))
    return "\n".join(out) or "No cost section in vas.json.\n"


def forget_generation(data: dict[str, Any]) -> str:
    rows = []
    for backend in ("sqlite", "postgresql"):
        for name, r in (data.get(backend) or {}).items():
            rows.append([backend, f"`{name}`", _num(r["p50_ms"], 2), _num(r["p95_ms"], 2)])
    return _table(["backend", "operation", "p50 ms", "p95 ms"], rows)


def replica_rss(data: dict[str, Any]) -> str:
    rows = []
    for run in data.get("rows", []):
        rows.append([f"`{run.get('backend', '?')}`", _num(run.get("users")), _num(run.get("requests_ok")),
                     _num(len(run.get("non_200") or {})), _num(run.get("rss_ready_mb"), 0),
                     _num(run.get("rss_end_mb"), 0), _num(run.get("rss_peak_mb"), 0)])
    cfg = data.get("config", {})
    head = (f"Distinct users served once each (every {cfg.get('retrieve_every', '?')}th also retrieves), "
            f"concurrency {cfg.get('concurrency', '?')}; embedded bound `memory.max_open_collections` = "
            f"{cfg.get('max_open_collections_effective', '?')}.\n\n")
    return head + _table(["backend", "users", "requests ok", "non-200 kinds", "RSS ready MB", "RSS after MB",
                          "RSS peak MB"], rows) if rows else "No runs in replica_rss.json.\n"


def overhead(data: dict[str, Any]) -> str:
    rows = []
    for contender, modes in data["added"].items():
        for mode, cells in modes.items():
            for conc, r in sorted(cells.items(), key=lambda kv: int(kv[0])):
                main = r.get("ttfb") if mode == "stream" else r.get("total")
                total = r.get("total") if mode == "stream" else None
                rows.append([
                    f"`{contender}`", "stream TTFB" if mode == "stream" else mode, conc,
                    _num((main or {}).get("p50"), 2), _num((main or {}).get("p95"), 2), _num((main or {}).get("p99"), 2),
                    _num((total or {}).get("p50"), 2) if total else "-",
                    _num(r.get("server_cpu_ms_per_request"), 2), _num(r.get("errors")),
                    "yes" if r.get("under_load") else "no",
                ])
    head = (f"Measured {data.get('when', '?')} at commit `{(data.get('git') or {}).get('commit', '?')[:7]}` on "
            f"{(data.get('machine') or {}).get('cpus', '?')} CPUs; added latency = the row's percentile minus its "
            "baseline's (direct to the fake upstream), ms. \"under load\": other processes used more than 15% of "
            "the machine during that cell.\n\n")
    return head + _table(
        ["row", "mode", "conc", "added p50", "added p95", "added p99", "stream total added p50",
         "server CPU ms/req", "errors", "under load"], rows) + "\n" + _load_note(data)


def soak_replicas(data: dict[str, Any]) -> str:
    rows = []
    for run in data["runs"]:
        lat = run.get("latency_ms", {})
        rows.append([
            _num(run["replicas"]), _num(run["throughput_rps"]), _num(run["errors_5xx"]),
            f"{_num(run['items_written'])} / {_num(run['items_expected'])}", _num(run.get("recordings_lost")),
            f"{_num(lat.get('p50'), 0)} / {_num(lat.get('p95'), 0)}", _num(run.get("rss_growth_pct_max")),
            _num(run.get("replica_cpu_ms_per_request")), _num(run.get("postgres_cpu_ms_per_request")),
            f"{float(run['loadavg_before'][0]):.1f}" if run.get("loadavg_before") else "-",
        ])
    cfg = data.get("config", {})
    head = (f"{_num(cfg.get('duration_s'), 0)} s per run at concurrency {cfg.get('concurrency', '?')}, "
            f"{cfg.get('users', '?')} users, requests {cfg.get('routing', '?')}, memory {cfg.get('memory', '?')}.\n\n")
    return head + _table(["replicas", "req/s", "5xx", "items written / expected", "recordings lost",
                          "latency p50 / p95 ms", "RSS growth % (worst replica)", "replica CPU ms/req",
                          "PostgreSQL CPU ms/req", "load before"], rows)


def vas_llama_cost(data: dict[str, Any]) -> str:
    out = []
    for tag, section in (data.get("llama_cost") or {}).items():
        load = (section.get("load") or {})
        rows = [[r["label"], r.get("base", "-"), r.get("value_dtype", "-"), _num(r.get("base_step_wall_ms_p50")),
                 _num(r.get("value_pass_wall_ms_p50")), _num(r.get("value_pass_cpu_ms_p50")),
                 _num(r.get("wall_s"), 2), _num(r.get("base_tokens"), 0), _num(r.get("mean_reward"), 3)]
                for r in section.get("rows", [])]
        starts = [v for k, v in load.items() if k.endswith("start")] if isinstance(load, dict) else []
        note = f" (load average {float(starts[0][0]):.1f} at start)" if starts else ""
        out.append(
            f"Run `{tag}`{note}: k = {section.get('top_k', '?')}, up to {section.get('max_tokens', '?')} tokens, "
            f"{section.get('prompts', '?')} prompts, reward `{section.get('reward', '?')}`, value threads "
            f"{section.get('value_threads', '?')}.\n\n"
            + _table(["method", "base", "value model", "base step p50 ms", "value pass p50 ms", "value pass CPU ms",
                      "s per answer", "base tokens", "mean reward"], rows))
    return "\n".join(out) or "No llama_cost section in vas.json.\n"


RENDERERS: dict[str, tuple[str, Renderer]] = {
    "vas_llama_cost.md": ("vas.json", vas_llama_cost),
    "soak_replicas.md": ("soak_replicas.json", soak_replicas),
    "overhead.md": ("overhead.json", overhead),
    "locomo_recall.md": ("locomo_recall.json", locomo_recall),
    "locomo_recall_postgres.md": ("locomo_recall_postgres.json", locomo_recall),
    "memory_retrieval.md": ("memory.json", memory_retrieval),
    "memory_ingest.md": ("memory.json", memory_ingest),
    "soak.md": ("soak.json", soak),
    "prefeval_recall.md": ("prefeval_recall.json", prefeval),
    "rpm_eval.md": ("rpm_eval.json", rpm_eval),
    "vas_cost.md": ("vas.json", vas_cost),
    "forget_generation.md": ("forget_generation.json", forget_generation),
    "replica_rss.md": ("replica_rss.json", replica_rss),
}


def render_tables(results: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for page, (source, render) in RENDERERS.items():
        path = results / source
        header = f"<!-- Generated by `python -m scripts.docsgen` from bench/results/{source}. -->\n"
        if not path.exists():
            out[page] = header + f"*No results yet: `bench/results/{source}` is not there.*\n"
            continue
        try:
            body = render(json.loads(path.read_text()))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            body = f"*`bench/results/{source}` does not have the shape this table expects ({exc!r}).*\n"
        out[page] = header + body
    return out
