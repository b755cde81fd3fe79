"""How much latency Rapport adds over calling the upstream directly, per stage, next to LiteLLM's proxy.

Every server is its own process (one worker each) in front of one shared fake upstream
(`bench/fake_upstream.py`), all in the same run. Rows (each a kind of request to one server):

- `direct`             the client calls the fake upstream's /v1/chat/completions itself (the baseline);
- `direct-responses`   the client calls the fake upstream's /v1/responses (the pass-through row's baseline),
                       when the fake upstream serves it;
- `rapport`            Rapport as it ships (memory, RPM and VAS loaded), personalization off: no user named;
- `rapport-memory`     the same server, named users with seeded memories, memory on (retrieval, neighbours
                       and composition on the request path; exchanges not recorded, so the store keeps its size);
- `rapport-rpm`        the same server, named users with a seeded labelled history, RPM cheap mode on;
- `rapport-responses`  the same server, POST /v1/responses bridged to the upstream's chat completions
                       (baseline: `direct`, the upstream call it costs); no user, stored (`store` default);
- `rapport-responses-passthrough`  /v1/responses for a `responses: passthrough` model (baseline:
                       `direct-responses`), reported "not available" when the fake upstream has no
                       /v1/responses or Rapport did not pass the request through;
- `rapport-httpx`      another Rapport with `upstream.transport=httpx` (optional);
- `rapport-litellm`    another Rapport through litellm, `upstream.fast_path=false` (optional);
- `litellm-proxy`      LiteLLM's own proxy server 1.110.2 (`bench/setup_litellm_proxy.sh`), master-key auth.

Every Rapport checks a static proxy key, as LiteLLM's proxy checks its master key. The load generator
(`bench/overhead_loadgen.py`) is a fresh asyncio aiohttp process per series. Non-stream and SSE stream
requests (time to first byte and total) at each concurrency: a warm-up, then the measured requests. Each
(mode, concurrency) cell runs every row back to back (so a row and its baseline see the same background
load); the sweep repeats `--rounds` times with the row order rotated, and samples are pooled over the rounds. Added latency is a row's percentile minus its baseline's. Each cell records
the load average and the share of the machine other processes used meanwhile (`under_load` above 15%).

    .venv/bin/python bench/overhead.py                 # full run: JSON, PNG and a table
    .venv/bin/python bench/overhead.py --quick         # a smoke run (few requests, one round)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import overhead_report as report
from bench import overhead_workload as workload
from bench.overhead_servers import (
    ADMIN_KEY,
    MASTER_KEY,
    LoadProbe,
    Server,
    litellm_proxy_version,
    start_fake_upstream,
    start_litellm_proxy,
    start_rapport,
    tree_cpu_seconds,
    wait_idle,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Row:
    server: str  # "upstream", "rapport", "rapport-httpx", "rapport-litellm", "litellm-proxy"
    endpoint: str  # "chat" or "responses"
    kind: str  # "plain", "memory" or "rpm"
    baseline: str | None
    model: str = "m"
    scale: float = 1.0  # share of --requests (the stage rows do more work per request)
    about: str = ""


ROWS: dict[str, Row] = {
    "direct": Row(
        "upstream", "chat", "plain", None, about="aiohttp client -> fake upstream chat completions"
    ),
    "direct-responses": Row(
        "upstream", "responses", "plain", None, about="aiohttp client -> fake upstream /v1/responses"
    ),
    "rapport": Row(
        "rapport", "chat", "plain", "direct", about="Rapport as shipped (memory, RPM, VAS loaded), no user"
    ),
    "rapport-memory": Row(
        "rapport",
        "chat",
        "memory",
        "direct",
        scale=0.34,
        about="named users with seeded memories, rapport.memory on, record false",
    ),
    "rapport-rpm": Row(
        "rapport",
        "chat",
        "rpm",
        "direct",
        scale=0.34,
        about="named users with seeded labelled history, rapport.rpm {mode: cheap}, record false",
    ),
    "rapport-responses": Row(
        "rapport",
        "responses",
        "plain",
        "direct",
        about="/v1/responses bridged to chat completions, no user, store default (true)",
    ),
    "rapport-responses-passthrough": Row(
        "rapport",
        "responses",
        "plain",
        "direct-responses",
        model="m-pt",
        about="/v1/responses passed through (model responses: passthrough)",
    ),
    "rapport-httpx": Row(
        "rapport-httpx", "chat", "plain", "direct", about="same server config, upstream.transport=httpx"
    ),
    "rapport-litellm": Row(
        "rapport-litellm", "chat", "plain", "direct", about="upstream.fast_path=false (litellm)"
    ),
    "litellm-proxy": Row(
        "litellm-proxy",
        "chat",
        "plain",
        "direct",
        about="litellm --config (1 worker) from .venv-litellm, master key auth, no database",
    ),
}
DEFAULT_ROWS = (
    "rapport",
    "rapport-memory",
    "rapport-rpm",
    "rapport-responses",
    "rapport-responses-passthrough",
    "litellm-proxy",
)


def run_cell(
    server: Server, upstream: Server, row: Row, plan: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    """One series (warm-up + measured requests) from a fresh load-generator process."""
    plan_file = workdir / "plan.json"
    out_file = workdir / "loadgen-out.json"
    out_file.unlink(missing_ok=True)
    path = "/chat/completions" if row.endpoint == "chat" else "/responses"
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    plan_file.write_text(
        json.dumps({**plan, "url": server.base_url + path, "headers": headers, "out": str(out_file)})
    )
    pids = {
        "server": server.process.pid if server.process else None,
        "upstream": upstream.process.pid if upstream.process else None,
    }
    before = {k: tree_cpu_seconds(v) for k, v in pids.items() if v is not None}
    probe = LoadProbe()
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead_loadgen.py"), str(plan_file)], check=True, cwd=ROOT
    )
    load = probe.finish()
    after = {k: tree_cpu_seconds(v) for k, v in pids.items() if v is not None}
    result: dict[str, Any] = json.loads(out_file.read_text())
    served = plan["warmup"] + len(result["total_ms"])
    result["cpu_ms_per_request"] = {k: (after[k] - before[k]) * 1000.0 / max(1, served) for k in before}
    result["load"] = load
    return result


def upstream_hits(upstream: Server) -> dict[str, int]:
    import httpx

    try:
        r = httpx.get(upstream.root_url + "/stats", timeout=5)
        return dict(r.json().get("hits", {})) if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def passthrough_check(rapport: Server, upstream: Server) -> str | None:
    """None when Rapport passes a `responses: passthrough` model's request to the upstream's /v1/responses;
    otherwise why the pass-through row is not available."""
    import httpx

    body = workload.responses_body("m", workload.HELLO, False)
    direct = httpx.post(upstream.base_url + "/responses", content=body, timeout=10)
    if direct.status_code != 200:
        return f"the fake upstream does not serve /v1/responses (HTTP {direct.status_code})"
    before = upstream_hits(upstream)
    if not before:
        return "the fake upstream does not count requests (GET /stats)"
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    through = httpx.post(
        rapport.base_url + "/responses", content=body.replace('"m"', '"m-pt"', 1), headers=headers, timeout=30
    )
    if through.status_code != 200:
        return f"Rapport answered {through.status_code} for a passthrough model: {through.text[:120]}"
    after = upstream_hits(upstream)
    if after.get("/v1/responses", 0) <= before.get("/v1/responses", 0):
        return "Rapport bridged the passthrough model to chat completions (pass-through not in this tree)"
    return None


def stage_check(rapport: Server, kind: str) -> dict[str, Any]:
    """One request of a stage row (not measured): the stage must have run, or the row would measure nothing.
    Returns the stage's own report (what it retrieved or conditioned on), kept in the JSON."""
    import httpx

    body = workload.bodies(kind, "chat", "m", False, 1, 1, "check")[0]
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    r = httpx.post(rapport.base_url + "/chat/completions", content=body, headers=headers, timeout=60)
    r.raise_for_status()
    stages = {s["name"]: s for s in r.json()["rapport"]["stages"]}
    stage = stages.get(kind)
    if stage is None or not stage["ran"] or (kind == "rpm" and not stage["detail"].get("conditioned")):
        raise RuntimeError(f"the {kind} stage did not run for a seeded user: {stages}")
    return {"duration_ms": stage["duration_ms"], "detail": stage["detail"]}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in (
        "rapport",
        "fastapi",
        "starlette",
        "uvicorn",
        "httpx",
        "litellm",
        "aiohttp",
        "uvloop",
        "httptools",
        "chromadb",
        "onnxruntime",
        "sentence-transformers",
        "torch",
    ):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "missing"
    out["litellm (proxy venv)"] = litellm_proxy_version()
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_tracked_files": len(changed)}


def reproducible_command(out: Path) -> str:
    """The command line of this run, with --out named relative to the repository (never a machine path)."""
    args = sys.argv[1:]
    shown = out.resolve().relative_to(ROOT).as_posix() if out.resolve().is_relative_to(ROOT) else out.name
    for i, arg in enumerate(args):
        if arg == "--out" and i + 1 < len(args):
            args[i + 1] = shown
        elif arg.startswith("--out="):
            args[i] = f"--out={shown}"
    return " ".join([".venv/bin/python bench/overhead.py", *args])


def plan_series(args: argparse.Namespace, row: Row, levels: list[int], rnd: int) -> list[dict[str, Any]]:
    scale = {1: 1, 16: 2, 64: 4}
    out = []
    for mode in report.MODES:
        for c in levels:
            requests = max(5, round(args.requests * scale.get(c, 4) * row.scale))
            warmup = max(args.min_warmup, 2 * c)
            salt = f"r{rnd}{mode[0]}{c}"
            bodies = workload.bodies(
                row.kind, row.endpoint, row.model, mode == "stream", warmup + requests, args.users, salt
            )
            out.append(
                {
                    "mode": mode,
                    "concurrency": c,
                    "requests": requests,
                    "warmup": warmup,
                    "stream": mode == "stream",
                    "endpoint": row.endpoint,
                    "bodies": bodies,
                }
            )
    return out


def start_servers(names: list[str], upstream: Server, workdir: Path, plugins: str) -> dict[str, Server]:
    servers: dict[str, Server] = {"upstream": upstream}
    for needed in dict.fromkeys(ROWS[n].server for n in names):
        if needed == "rapport":
            servers[needed] = start_rapport(needed, upstream.base_url, workdir, plugins=plugins)
        elif needed == "rapport-httpx":
            servers[needed] = start_rapport(
                needed, upstream.base_url, workdir, transport="httpx", plugins=plugins
            )
        elif needed == "rapport-litellm":
            servers[needed] = start_rapport(
                needed, upstream.base_url, workdir, fast_path=False, plugins=plugins
            )
        elif needed == "litellm-proxy":
            servers[needed] = start_litellm_proxy(upstream.base_url, workdir)
    return servers


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--requests", type=int, default=300, help="requests per series at c=1 (x2 at c=16, x4 at c=64)"
    )
    parser.add_argument(
        "--min-warmup", type=int, default=30, help="warm-up requests per series (at least 2 x c)"
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"any of {', '.join(ROWS)}")
    parser.add_argument(
        "--plugins",
        choices=("default", "none"),
        default="default",
        help="stages loaded in the Rapport servers (none: no memory/RPM rows)",
    )
    parser.add_argument("--users", type=int, default=4, help="seeded users per stage row")
    parser.add_argument("--items-per-user", type=int, default=300, help="stored memories per memory user")
    parser.add_argument("--history-per-user", type=int, default=40, help="labelled RPM entries per RPM user")
    parser.add_argument("--quick", action="store_true", help="validation run: one round, 30 requests at c=1")
    parser.add_argument("--out", default=str(RESULTS / "overhead.json"))
    parser.add_argument(
        "--readme", action="store_true", help="also rewrite the README's marked overhead table"
    )
    parser.add_argument("--render", action="store_true", help="only redraw the table and PNG from --out")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.min_warmup = 1, 30, 10
    return args


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    if args.render:
        saved = json.loads(out.read_text())
        levels = [int(c) for c in saved["setup"]["concurrency"]]
        report.plot(saved, levels, out.with_suffix(".png"))
        report.print_table(saved, levels, saved.get("not_available", {}))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows: {unknown}; choose from {list(ROWS)}")
    if args.plugins == "none":
        names = [n for n in names if ROWS[n].kind == "plain"]
    for needed in [ROWS[n].baseline for n in names]:
        if needed and needed not in names:
            names.insert(0, needed)
    names = list(dict.fromkeys(["direct", *names]))

    from tqdm import tqdm

    workdir = Path(tempfile.mkdtemp(prefix="rapport-overhead-"))
    load_before = os.getloadavg()
    started = time.monotonic()
    upstream = start_fake_upstream(workdir)
    servers: dict[str, Server] = {}
    raw: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = {}
    unavailable: dict[str, str] = {}
    seeded: dict[str, Any] = {}
    try:
        servers = start_servers(names, upstream, workdir, args.plugins)
        if "rapport-responses-passthrough" in names:
            why = passthrough_check(servers["rapport"], upstream)
            if why is not None:
                unavailable["rapport-responses-passthrough"] = why
                names = [n for n in names if n not in ("rapport-responses-passthrough", "direct-responses")]
        memory_users = args.users if "rapport-memory" in names else 0
        rpm_users = args.users if "rapport-rpm" in names else 0
        if memory_users or rpm_users:
            seeded = workload.seed(
                servers["rapport"].root_url,
                ADMIN_KEY,
                memory_users,
                args.items_per_user,
                rpm_users,
                args.history_per_user,
            )
            seeded["settle_s"] = round(wait_idle(servers["rapport"].process.pid), 1)  # type: ignore[union-attr]
            seeded["stage_check"] = {
                kind: stage_check(servers["rapport"], kind)
                for kind, n in (("memory", memory_users), ("rpm", rpm_users))
                if n
            }
        setup_s = time.monotonic() - started
        with tqdm(
            total=args.rounds * len(names) * len(report.MODES) * len(levels), desc="cells", unit="cell"
        ) as bar:
            for rnd in range(args.rounds):
                # Each (mode, concurrency) cell runs every row back to back, so a row and its baseline are measured
                # within one sweep of that cell, under the same background load; the order rotates per round.
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                plans = {name: plan_series(args, ROWS[name], levels, rnd) for name in order}
                for cell in range(len(report.MODES) * len(levels)):
                    for name in order:
                        row, plan = ROWS[name], plans[name][cell]
                        bar.set_postfix_str(f"round {rnd + 1}: {name} {plan['mode']} c={plan['concurrency']}")
                        result = run_cell(servers[row.server], upstream, row, plan, workdir)
                        for key in ("mode", "concurrency", "requests", "warmup"):
                            result[key] = plan[key]
                        raw.setdefault(name, {}).setdefault(plan["mode"], {}).setdefault(
                            plan["concurrency"], []
                        ).append(result)
                        bar.update(1)
    finally:
        for server in servers.values():
            server.stop()
        upstream.stop()
    load_after = os.getloadavg()

    baselines = {n: ROWS[n].baseline for n in names if ROWS[n].baseline}
    summary = report.summarize(raw, baselines)  # type: ignore[arg-type]
    flagged = sorted(
        f"{n}/{m}/c{c}"
        for n, ms in summary["stats"].items()
        for m, ls in ms.items()
        for c, e in ls.items()
        if e["under_load"]
    )
    result_json = {
        "benchmark": "overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": reproducible_command(out),
        "git": git_state(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "platform": platform.platform(),
        },
        "versions": versions(),
        "setup": {
            "rounds": args.rounds,
            "concurrency": levels,
            "series": {
                n: [
                    {k: p[k] for k in ("mode", "concurrency", "requests", "warmup")}
                    for p in plan_series(args, ROWS[n], levels, 0)
                ]
                for n in names
            },
            "rows": {
                n: {"about": ROWS[n].about, "baseline": ROWS[n].baseline, "endpoint": ROWS[n].endpoint}
                for n in names
            },
            "plugins": args.plugins,
            "seeded": {
                "users_per_stage_row": args.users,
                "memory_items_per_user": args.items_per_user,
                "rpm_history_per_user": args.history_per_user,
                **seeded,
            },
            "upstream": "bench/fake_upstream.py (raw asyncio + uvloop), SSE: 11 events + usage + [DONE]",
            "added": "row percentile minus its baseline's percentile, samples pooled over rounds",
            "under_load": f"a cell where other processes used over {report.FOREIGN_LOAD_FLAG:.0%} of the machine",
            "setup_s": round(setup_s, 1),
            "total_s": round(time.monotonic() - started, 1),
        },
        "not_available": unavailable,
        "cells_under_load": flagged,
        "goals": report.goals(summary["added"], levels),
        **summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result_json, indent=2))
    report.plot(summary, levels, out.with_suffix(".png"))
    report.print_table(summary, levels, unavailable)
    print(json.dumps({"goals": result_json["goals"], "cells_under_load": flagged}, indent=2))
    if args.readme:
        report.update_readme(ROOT / "README.md", result_json, levels)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
