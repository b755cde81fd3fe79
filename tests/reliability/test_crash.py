"""Crash safety (issue 6 item 7): kill -9 a real `rapport serve` during heavy ingest, restart it on the same
data dir: the stores open cleanly, every acknowledged write is there exactly once, queued jobs finish.

Acknowledged writes are admin memory adds (201 with an id) and imports (201 with a count); chats are recorded
after their response, so a chat killed mid-recording is not an acknowledged write and is not counted.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.soak import ADMIN_KEY, API_KEY, FakeUpstreamProcess, RapportProcess, write_config

USERS = [f"crash-{i}" for i in range(6)]
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture()
def upstream():
    process = FakeUpstreamProcess()
    yield process
    process.stop()


def _writer(url: str, worker: int, acked: list[tuple[str, str]], stop: threading.Event) -> None:
    """Adds and imports as fast as the server takes them; records only what it acknowledged."""
    n = 0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            n += 1
            user = USERS[(worker + n) % len(USERS)]
            try:
                if n % 5 == 0:
                    texts = [f"imported w{worker} n{n} part{j}" for j in range(4)]
                    response = client.post(
                        f"{url}/admin/users/{user}/import", params={"tenant": "soak"}, headers=ADMIN,
                        json={"items": [{"text": t} for t in texts]},
                    )  # fmt: skip
                    if response.status_code == 201:
                        acked.extend((user, t) for t in texts)
                else:
                    text = f"memory w{worker} n{n}: likes topic {n % 13}"
                    response = client.post(
                        f"{url}/admin/users/{user}/memories", params={"tenant": "soak"}, headers=ADMIN, json={"text": text}
                    )
                    if response.status_code == 201:
                        acked.append((user, text))
                if n % 3 == 0:
                    # Chats add recording work (and summary jobs) in the background while we write.
                    client.post(
                        f"{url}/v1/chat/completions",
                        headers={"authorization": f"Bearer {API_KEY}", "x-rapport-user": user},
                        json={"model": "m", "messages": [{"role": "user", "content": f"chat w{worker} n{n}"}]},
                    )
            except httpx.HTTPError:
                return  # the server is gone


def test_kill_9_during_ingest_loses_and_duplicates_nothing(tmp_path: Path, upstream) -> None:
    config = write_config(tmp_path / "data", upstream.base_url, memory={"summary_every": 3})
    server = RapportProcess(config, tmp_path / "server.log").start()
    acked: list[tuple[str, str]] = []
    stop = threading.Event()
    writers = [threading.Thread(target=_writer, args=(server.url, w, acked, stop)) for w in range(6)]
    try:
        for thread in writers:
            thread.start()
        deadline = time.monotonic() + 120
        while len(acked) < 120:
            assert time.monotonic() < deadline, f"only {len(acked)} writes acknowledged"
            time.sleep(0.05)
        server.kill()  # mid-flight: the writers still have requests open
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=60)
        server.kill()
    acknowledged = list(acked)
    assert len(acknowledged) >= 120

    restarted = RapportProcess(config, tmp_path / "server.log").start()
    try:
        with httpx.Client(timeout=60, headers=ADMIN) as client:
            for user in USERS:
                items = client.get(
                    f"{restarted.url}/admin/users/{user}/memories", params={"tenant": "soak", "limit": 1000}
                ).json()["data"]
                stored = collections.Counter(item["text"] for item in items)
                expected = [text for owner, text in acknowledged if owner == user]
                missing = [text for text in expected if stored[text] == 0]
                assert not missing, f"{user}: {len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
                duplicated = [text for text, count in stored.items() if count > 1]
                assert not duplicated, f"{user}: duplicated after restart: {duplicated[:3]}"
            # Jobs queued or running at the kill are resumed and finish (or fail visibly), none stay stuck.
            deadline = time.monotonic() + 180
            while True:
                counts = client.get(f"{restarted.url}/admin/jobs", params={"limit": 1}).json()["counts"]
                if not counts.get("pending") and not counts.get("running"):
                    break
                assert time.monotonic() < deadline, f"jobs stuck after restart: {counts}"
                time.sleep(0.5)
            assert counts.get("succeeded", 0) > 0, counts
            # And the restarted server still serves and records.
            chat = httpx.post(
                f"{restarted.url}/v1/chat/completions",
                headers={"authorization": f"Bearer {API_KEY}", "x-rapport-user": USERS[0]},
                json={"model": "m", "messages": [{"role": "user", "content": "still there?"}]},
                timeout=60,
            )
            assert chat.status_code == 200
    finally:
        restarted.stop()
