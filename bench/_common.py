"""Helpers shared by the memory benches: PrefEval loading, a Chroma server process, percentiles."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "prefeval"
RESULTS = ROOT / "bench" / "results"


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
        "mean_ms": round(float(arr.mean()), 3),
    }


def inter_turn_user_texts() -> list[str]:
    """User messages of PrefEval's unrelated inter-turn conversations, in order."""
    convs = json.loads((DATA / "filtered_inter_turns.json").read_text())
    return [
        m["content"] for c in convs for m in c["conversation"] if m["role"] == "user" and m["content"].strip()
    ]


def explicit_preferences() -> list[dict[str, Any]]:
    """PrefEval explicit-preference records (topic, preference, question), in a stable order."""
    out: list[dict[str, Any]] = []
    for path in sorted((DATA / "explicit_preference").glob("*.json")):
        for i, rec in enumerate(json.loads(path.read_text())):
            out.append({"topic": path.stem, "index": i, **rec})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChromaServerProcess:
    """A real `chroma run` server on a free port (stopped on exit)."""

    def __init__(self, path: Path) -> None:
        self.port = free_port()
        exe = str(Path(sys.executable).with_name("chroma"))
        path.mkdir(parents=True, exist_ok=True)
        self._log = (path / "server.log").open("wb")
        self.process = subprocess.Popen(
            [exe, "run", "--path", str(path / "db"), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chroma server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
