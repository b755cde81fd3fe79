"""bench/overhead.py end to end at a tiny size: real server processes, the fake upstream, the JSON and PNG.

The stage rows (memory, RPM) are left out here: they load the embedding model and seed users, which takes
longer than a smoke test should; the bench checks on every run that those stages ran (`stage_check`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_bench_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    cmd = [
        sys.executable, "bench/overhead.py", "--rounds", "1", "--requests", "5", "--min-warmup", "2",
        "--concurrency", "1", "--rows", "rapport,rapport-responses", "--plugins", "none", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    text = out.read_text()
    result = json.loads(text)
    assert str(tmp_path) not in text and "/tmp/" not in text  # no machine path in a result file
    assert set(result["added"]) == {"rapport", "rapport-responses"}
    for name in ("direct", "rapport", "rapport-responses"):
        for mode in ("non-stream", "stream"):
            for conc, planned in (("1", 5),):
                cell = result["stats"][name][mode][conc]
                assert cell["errors"] == 0 and cell["requests"] == planned, (name, mode, conc, cell)
                assert 0.0 <= cell["load_per_round"][0]["foreign_cpu_share"] <= 1.0
    for name in ("rapport", "rapport-responses"):
        assert result["added"][name]["stream"]["1"]["baseline"] == "direct"
        assert result["added"][name]["stream"]["1"]["ttfb"]["p50"] > -1000.0
    goal = result["goals"]["rapport (personalization off)"]["added_p50_under_2ms_at_c1"]
    assert set(goal) == {"non-stream", "stream_ttfb"}
    assert result["git"]["commit"] and result["versions"]["python"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "rapport" in done.stdout and "Added latency" in done.stdout  # the table is printed
