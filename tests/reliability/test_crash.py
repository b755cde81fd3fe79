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


@pytest.mark.parametrize("backend", ["embedded", "shared"])
def test_kill_9_during_ingest_loses_and_duplicates_nothing(
    tmp_path: Path, upstream, backend: str, request: pytest.FixtureRequest
) -> None:
    """Embedded: one server, killed and restarted on its data dir. Shared: two replicas on one PostgreSQL with
    the writers spread over both; replica A is killed mid-flight while B keeps serving, then A comes back, and
    every acknowledged write (through either replica) is there exactly once, read through both."""
    sections: dict[str, object] = {}
    if backend == "shared":
        # A short lease, so the jobs the killed replica held are taken over within the test.
        sections = {"database_url": request.getfixturevalue("postgres_url"), "database": {"job_lease_s": 2.0}}
    config_a = write_config(tmp_path / "data-a", upstream.base_url, memory={"summary_every": 3}, **sections)
    replicas = [RapportProcess(config_a, tmp_path / "server-a.log").start()]
    if backend == "shared":
        config_b = write_config(tmp_path / "data-b", upstream.base_url, memory={"summary_every": 3}, **sections)
        replicas.append(RapportProcess(config_b, tmp_path / "server-b.log").start())
    acked: list[tuple[str, str]] = []
    stop = threading.Event()
    writers = [
        threading.Thread(target=_writer, args=(replicas[w % len(replicas)].url, w, acked, stop)) for w in range(6)
    ]
    try:
        for thread in writers:
            thread.start()
        deadline = time.monotonic() + 120
        while len(acked) < 120:
            assert time.monotonic() < deadline, f"only {len(acked)} writes acknowledged"
            time.sleep(0.05)
        replicas[0].kill()  # mid-flight: its writers still have requests open; replica B (shared) keeps serving
        if backend == "shared":
            # B keeps acknowledging writes after A died.
            after_kill = len(acked)
            deadline = time.monotonic() + 60
            while len(acked) < after_kill + 30:
                assert time.monotonic() < deadline, "replica B stopped acknowledging writes after A was killed"
                time.sleep(0.05)
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=60)
        replicas[0].kill()
    acknowledged = list(acked)
    assert len(acknowledged) >= 120

    restarted = RapportProcess(config_a, tmp_path / "server-a.log").start()
    readers = [restarted, *replicas[1:]]
    try:
        with httpx.Client(timeout=60, headers=ADMIN) as client:
            for reader in readers:
                for user in USERS:
                    items = client.get(
                        f"{reader.url}/admin/users/{user}/memories", params={"tenant": "soak", "limit": 1000}
                    ).json()["data"]
                    stored = collections.Counter(item["text"] for item in items)
                    expected = [text for owner, text in acknowledged if owner == user]
                    missing = [text for text in expected if stored[text] == 0]
                    assert not missing, f"{user}: {len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
                    duplicated = [text for text, count in stored.items() if count > 1]
                    assert not duplicated, f"{user}: duplicated after restart: {duplicated[:3]}"
            # Jobs queued or running at the kill are resumed (shared: taken over once the dead replica's lease
            # expires) and finish, or fail visibly; none stay stuck.
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
        for replica in replicas[1:]:
            replica.stop()


RPM_USERS = [f"rpm-crash-{i}" for i in range(6)]
CUISINES = ["thai", "sushi", "pizza", "tacos", "ramen", "curry", "falafel"]
BUDGETS = ["cheap", "moderate", "pricey"]


def _history(user: str, batch: int) -> list[dict[str, str]]:
    """Labelled history whose explicit `name: value` pairs give the cheap extractor stable features."""
    return [
        {
            "input": f"cuisine: {CUISINES[(batch * 5 + j) % 7]}; budget: {BUDGETS[j % 3]}. Rate {user} visit {batch}.{j}",
            "response": str(1 + (batch + j) % 5),
        }
        for j in range(5)
    ]


def _rpm_state(client: httpx.Client, url: str, user: str) -> dict[str, object]:
    base = f"{url}/admin/users/{user}"
    params = {"tenant": "soak"}
    history = client.get(f"{base}/rpm/history", params={**params, "limit": 1000}).json()["data"]
    features = client.get(f"{base}/rpm/features", params=params).json()["data"]
    paths = client.get(f"{base}/rpm/paths", params=params).json()["data"]
    factors = client.get(f"{base}/rpm/factors", params=params).json()["data"]
    return {
        "inputs": collections.Counter(entry["input"] for entry in history),
        "statuses": collections.Counter(entry["status"] for entry in history),
        "features": sorted((f["entry_id"], f["name"], f["value"]) for f in features),
        "paths": sorted(p["entry_id"] for p in paths),
        "factors": sorted(f["name"] for f in factors),
    }


def _wait_jobs_done(client: httpx.Client, url: str, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts: dict[str, int] = client.get(f"{url}/admin/jobs", params={"limit": 1}).json()["counts"]
        if not counts.get("pending") and not counts.get("running"):
            return counts
        assert time.monotonic() < deadline, f"jobs stuck after restart: {counts}"
        time.sleep(0.5)


def test_kill_9_during_rpm_builds_resumes_them_without_duplicates(tmp_path: Path, upstream) -> None:
    """History imports (each queues a build; pending builds of one user collapse into one) come while
    builds run; kill -9 with builds done, queued and one running. After restart the queued builds run to the end, every acknowledged import is there once,
    and each user's features, factors and paths equal what a clean rebuild of the same history gives."""
    config = write_config(tmp_path / "data", upstream.base_url, rpm={"construction_mode": "cheap"})
    server = RapportProcess(config, tmp_path / "server.log").start()
    acked: list[tuple[str, str]] = []
    stop = threading.Event()

    def importer(worker: int) -> None:
        batch = 0
        with httpx.Client(timeout=30, headers=ADMIN) as client:
            # Bounded (at most 3 x 8 x 5 entries): the resumed builds and the clean rebuild stay short.
            while not stop.is_set() and batch < 8:
                batch += 1
                user = RPM_USERS[(worker + batch) % len(RPM_USERS)]
                items = _history(user, batch * 10 + worker)
                try:
                    response = client.post(
                        f"{server.url}/admin/users/{user}/history", params={"tenant": "soak"},
                        json={"items": items, "build": True},
                    )  # fmt: skip
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 201:
                    acked.extend((user, item["input"]) for item in items)

    threads = [threading.Thread(target=importer, args=(w,)) for w in range(3)]
    try:
        for thread in threads:
            thread.start()
        # Kill once builds have both finished and piled up: some done, several queued, one running.
        deadline = time.monotonic() + 180
        with httpx.Client(timeout=30, headers=ADMIN) as client:
            while True:
                counts = client.get(f"{server.url}/admin/jobs", params={"limit": 1}).json()["counts"]
                if counts.get("succeeded", 0) >= 1 and counts.get("pending", 0) >= 2 and counts.get("running"):
                    break
                assert time.monotonic() < deadline, f"builds never piled up: {counts}"
                time.sleep(0.05)
        server.kill()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        server.kill()
    acknowledged = list(acked)
    assert acknowledged

    restarted = RapportProcess(config, tmp_path / "server.log").start()
    try:
        with httpx.Client(timeout=60, headers=ADMIN) as client:
            counts = _wait_jobs_done(client, restarted.url, timeout=300)
            assert not counts.get("failed"), counts
            resumed = {user: _rpm_state(client, restarted.url, user) for user in RPM_USERS}
            for user, state in resumed.items():
                expected = collections.Counter(text for owner, text in acknowledged if owner == user)
                inputs = state["inputs"]
                assert isinstance(inputs, collections.Counter)
                missing = [text for text in expected if inputs[text] == 0]
                assert not missing, f"{user}: acknowledged history lost: {missing[:3]}"
                duplicated = [text for text, n in inputs.items() if n > 1]
                assert not duplicated, f"{user}: history duplicated: {duplicated[:3]}"
                # Every entry was built to the end: none left pending or half-built.
                assert set(state["statuses"]) <= {"done", "skipped"}, (user, state["statuses"])  # type: ignore[call-overload]
            # A clean build of the same history, from scratch, for every user.
            for user in RPM_USERS:
                response = client.post(
                    f"{restarted.url}/admin/users/{user}/rpm/rebuild", params={"tenant": "soak"}, json={"full": True}
                )
                assert response.status_code == 202, response.text
            _wait_jobs_done(client, restarted.url, timeout=300)
            for user in RPM_USERS:
                clean = _rpm_state(client, restarted.url, user)
                got = resumed[user]
                assert got["features"] == clean["features"], f"{user}: features differ from a clean build"
                assert got["paths"] == clean["paths"], f"{user}: paths differ from a clean build"
                assert got["factors"] == clean["factors"], f"{user}: factors differ from a clean build"
                assert clean["features"], f"{user}: a clean build found no features (the test would prove nothing)"
    finally:
        restarted.stop()
