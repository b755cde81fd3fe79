"""The short soak (issue 6 item 8): `bench/soak.py` for a few seconds at concurrency 64, memory on.

The full run (10 minutes) is a benchmark, not a test; this keeps its invariants in CI: no 5xx, no transport
errors, and every successful chat recorded exactly once. Latency and RSS are reported, not asserted.
"""

from __future__ import annotations

from pathlib import Path

from bench.soak import run_soak


def test_short_soak_serves_everything_and_records_every_turn(tmp_path: Path) -> None:
    result = run_soak(duration=8.0, concurrency=64, users=40, warmup=2.0, workdir=tmp_path)
    print(result)
    assert result["requests_served"] > 0
    assert result["errors_5xx"] == 0, result["statuses"]
    log = tmp_path / "server.log"
    server_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    assert result["transport_errors"] == 0, (result["transport_error_kinds"], server_log)
    assert set(result["statuses"]) == {"200"}, result["statuses"]
    assert result["items_written"] == result["items_expected"], result
