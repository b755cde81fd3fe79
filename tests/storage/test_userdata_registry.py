"""The user-data registry: every store holding per-user data forgets, exports and imports through it.

Store level, on both backends (`storage`): RPM's, VAS's and stored responses' parts round-trip a user into
another user (RPM's ids renumbered, its references followed), a second import adds nothing, and a section that
cannot be written leaves nothing. Server level, on the embedded default and on PostgreSQL: for every part the
running server registered (iterated, so a part added later is covered with no edit here), a user's export
holds data, imports into another user and another tenant round-trip, and the user's forget leaves the other two
exactly as they were.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from proxy.entrypoints.responses.store import SqlResponseStore, StoredResponse, responses_part
from rapport.core.userdata import ImportFailed, TablesPart, is_empty
from reasoning.rpm.feedback_store import FeedbackStore
from reasoning.rpm.store import RPMStore
from reasoning.rpm.store_schema import TABLES
from reasoning.vas.store import ProfileStore
from reasoning.vas.userdata import vas_part
from tests.storage.test_rpm_vas_responses_stores import fill_rpm, rpm_rows
from tests.support.helpers import admin
from tests.support.postgres import Backend

DAY = 86400.0


def rpm_tables_part(store: RPMStore) -> TablesPart:
    # The part without the engine (its forget is the store's), built from the same table list as rpm_part.
    import dataclasses

    tables = TABLES[store.db.dialect]
    return TablesPart("rpm", store.db, {f.name: getattr(tables, f.name) for f in dataclasses.fields(tables)})


def rpm_view(store: RPMStore, tenant: str, user: str) -> dict[str, Any]:
    """What RPM's own reads return for a user, ids left out but every link between rows kept as content."""
    entries = {e.id: e for e in store.entries(tenant, user, details=True)}
    factors = {f.id: f.name for f in store.factors(tenant, user)}
    features = store.features(tenant, user)
    return {
        "entries": sorted((e.input, e.response, e.task, e.status) for e in entries.values()),
        "features": sorted(
            (entries[f.entry_id].input, f.name, f.value, factors.get(f.factor_id) if f.factor_id else None)
            for f in features
        ),
        "factors": sorted(factors.values()),
        "paths": sorted((entries[p.entry_id].input, p.text) for p in store.paths(tenant, user)),
        "build": (store.build(tenant, user) or {}).get("state"),
    }


def test_rpm_part_round_trips_a_user_with_its_links(storage: Backend) -> None:
    store = RPMStore(storage.open())
    part = rpm_tables_part(store)
    fill_rpm(store, "t1", "alice")
    # Another user's rows first, so alice's ids are not bob's next ids (the links must be remapped, not copied).
    fill_rpm(store, "t1", "carol")

    async def run() -> None:
        section = await part.export("t1", "alice")
        # Every table of RPM's store has its rows in the section (tables added later too, empty here).
        filled = {"entries": 2, "features": 2, "factors": 1, "paths": 2, "builds": 1}
        assert set(section) == set(part.tables)
        assert {key: len(rows) for key, rows in section.items()} == {key: filled.get(key, 0) for key in section}
        first = await part.import_("t1", "bob", json.loads(json.dumps(section)))
        assert first == {key: filled.get(key, 0) for key in section}
        assert rpm_view(store, "t1", "bob") == rpm_view(store, "t1", "alice")
        assert {r["id"] for r in (await part.export("t1", "bob"))["entries"]}.isdisjoint(
            {r["id"] for r in section["entries"]})
        # The same document again: every row is already there, nothing is written.
        again = await part.import_("t1", "bob", json.loads(json.dumps(section)))
        assert again == {key: 0 for key in section}
        assert rpm_rows(store.db, "t1", "bob") == rpm_rows(store.db, "t1", "alice")
        assert await part.owners("t1") == {"alice", "bob", "carol"}

        # A section with one bad row is refused whole: the good rows before it are not written.
        bad = json.loads(json.dumps(section))
        bad["paths"].append({"entry_id": 1, "text": "x", "source": "llm", "vec": "not base64!"})
        with pytest.raises(Exception):  # noqa: B017 (binascii.Error from the base64 decode)
            await part.import_("t1", "dave", bad)
        assert sum(rpm_rows(store.db, "t1", "dave").values()) == 0
        with pytest.raises(ImportFailed):
            await part.import_("t1", "dave", {"entries": [], "nonsense": []})

    asyncio.run(run())
    store.close()


def test_vas_and_responses_parts_round_trip(storage: Backend) -> None:
    db = storage.open()
    profiles = ProfileStore(db)
    responses = SqlResponseStore(db, 30 * DAY)
    profiles.put("t1", "alice", {"sentiment": 0.5, "brevity": -1.0}, 2.0)
    stored = StoredResponse("resp_1", "t1", "alice", time.time(), {"id": "resp_1", "output_text": "hi"},
                            [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}])
    responses.save(stored)
    vas, resp = vas_part(profiles), responses_part(db)

    async def run() -> None:
        assert await vas.import_("t1", "bob", await vas.export("t1", "alice")) == {"profiles": 1}
        assert await resp.import_("t1", "bob", json.loads(json.dumps(await resp.export("t1", "alice")))) == {
            "responses": 1}

    asyncio.run(run())
    got, want = profiles.get("t1", "bob"), profiles.get("t1", "alice")
    assert got is not None and want is not None
    assert (got.weights, got.beta, got.updated_at) == (want.weights, want.beta, want.updated_at)
    copied = responses.get("t1", "bob", "resp_1")
    assert copied is not None and (copied.response, copied.history) == (stored.response, stored.history)
    profiles.close()
    responses.close()


# -- the registry of a running server ------------------------------------------------------------------------

IDENTITY = {"id", "tenant", "user", "source"}


def content(section: Any) -> Any:
    """A section without what an import changes on purpose: row ids, the owner and an item's source; lists
    compared as sets of rows."""
    if isinstance(section, dict):
        return {k: content(v) for k, v in section.items()
                if k not in IDENTITY and not (k.endswith("_id") and isinstance(v, int))}
    if isinstance(section, list):
        return sorted((content(v) for v in section), key=lambda v: json.dumps(v, sort_keys=True))
    return section


def fill(h: Any, tenant: str, user: str) -> None:
    """Something of the user in every store a server has today; a part added later must add its own here."""
    with admin(h) as client:
        r = client.post(f"/admin/users/{user}/import", params={"tenant": tenant}, json={
            "items": [{"text": "I keep bees on the roof.", "ts": 100.0}, {"text": "My sister is called Ines.", "ts": 101.0}],
            "summaries": [{"task": "general", "version": 1, "text": "Keeps bees.", "created_at": 102.0}],
        })
        assert r.status_code == 201, r.text
    [rpm] = [p for p in h.services.plugins if p.name == "rpm"]
    fill_rpm(rpm.engine.store, tenant, user)
    FeedbackStore(rpm.engine.store, retention_s=30 * DAY, max_per_user=10).remember(
        tenant, user, "resp_bees", "Do bees sleep?", "They rest at night.", None)
    [vas] = [p for p in h.services.plugins if p.name == "vas"]
    vas.engine.store.put(tenant, user, {"sentiment": 0.25}, None)
    app_responses = SqlResponseStore(h.services.databases.for_store("responses"), 30 * DAY)
    app_responses.save(StoredResponse("resp_bees", tenant, user, time.time(), {"id": "resp_bees"},
                                      [{"role": "user", "content": "bees?"}]))


def exported(client: httpx.Client, tenant: str, user: str) -> dict[str, Any] | None:
    r = client.get(f"/admin/users/{user}/export", params={"tenant": tenant})
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    assert (doc["format"], doc["version"]) == ("rapport.user.v2", 2)
    return doc


@pytest.fixture(params=["embedded", "postgres"])
def server(request: pytest.FixtureRequest, make_rapport: Any, tmp_path: Path) -> Any:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return make_rapport(data_dir=tmp_path / "pg", database_url=url, memory={"summary_every": 1000})
    return make_rapport(data_dir=tmp_path / "embedded", memory={"summary_every": 1000})


def test_every_registered_part_round_trips_and_forgets_one_user_only(server: Any) -> None:
    parts = server.services.jobs.userdata.parts()
    names = [p.name for p in parts]
    assert {"memory", "rpm", "vas", "responses"} <= set(names)
    fill(server, "t1", "alice")
    with admin(server) as client:
        doc = exported(client, "t1", "alice")
        assert doc is not None and sorted(doc["parts"]) == sorted(names)
        for name in names:
            # A part that exports nothing here (or was registered through on_forget, without export) would be
            # checked for nothing below: fill() must give it data.
            assert not is_empty(doc["parts"][name]), f"part {name!r} holds nothing of the user after fill()"
            section = doc["parts"][name]
            if isinstance(section, dict):
                # Every table (or list) of a part too: one added to a store later must get data in fill().
                empty = sorted(key for key, rows in section.items() if isinstance(rows, list) and not rows)
                assert not empty, f"part {name!r}: nothing of the user in {empty} after fill()"

        # The whole document into another user of the tenant and the same user of another tenant.
        for tenant, user in (("t1", "bob"), ("t2", "alice")):
            r = client.post(f"/admin/users/{user}/import", params={"tenant": tenant}, json=doc)
            assert r.status_code == 201, r.text
            assert r.json()["errors"] == {} and sorted(r.json()["parts"]) == sorted(names)
        others = {key: exported(client, *key) for key in (("t1", "bob"), ("t2", "alice"))}
        for key, other in others.items():
            assert other is not None
            for name in names:
                assert content(other["parts"][name]) == content(doc["parts"][name]), (key, name)

        # Importing the same document again changes nothing in any part.
        r = client.post("/admin/users/bob/import", params={"tenant": "t1"}, json=doc)
        assert r.status_code == 201, r.text
        again = exported(client, "t1", "bob")
        assert again is not None and again["parts"] == others[("t1", "bob")]["parts"]

        removed = client.delete("/admin/users/alice", params={"tenant": "t1"}).json()["removed"]
        assert set(names) <= set(removed)
        assert exported(client, "t1", "alice") is None
        for key, before in others.items():
            after = exported(client, *key)
            assert after is not None and after["parts"] == before["parts"], key


def test_a_memory_only_v1_document_still_imports_and_a_bad_part_is_reported(server: Any) -> None:
    with admin(server) as client:
        v1 = {"format": "rapport.memory.v1", "items": [{"text": "I row on Sundays.", "ts": 5.0}], "summaries": []}
        r = client.post("/admin/users/ana/import", params={"tenant": "t1"}, json=v1)
        assert r.status_code == 201 and r.json()["items"] == 1, r.text
        doc = exported(client, "t1", "ana")
        assert doc is not None and [i["text"] for i in doc["parts"]["memory"]["items"]] == ["I row on Sundays."]

        # One good section and one the store refuses: the good one is imported, the other named, not written.
        mixed = {"format": "rapport.user.v2", "version": 2, "parts": {
            "vas": {"profiles": [{"weights": "{\"sentiment\": 1.0}", "beta": None, "updated_at": 1.0}]},
            "rpm": {"entries": [{"id": 1, "input": "x"}]},  # a row without its required columns
            "nonsense": {"rows": []},
        }}
        r = client.post("/admin/users/ana/import", params={"tenant": "t1"}, json=mixed)
        assert r.status_code == 201, r.text
        assert r.json()["parts"] == {"vas": {"profiles": 1}}
        assert set(r.json()["errors"]) == {"rpm", "nonsense"}
        doc = exported(client, "t1", "ana")
        assert doc is not None and doc["parts"]["rpm"]["entries"] == []

        # Nothing importable: a 400 naming the part.
        r = client.post("/admin/users/ana/import", params={"tenant": "t1"},
                        json={"format": "rapport.user.v2", "parts": {"rpm": {"bogus": []}}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "parts.rpm", r.text
        r = client.post("/admin/users/ana/import", params={"tenant": "t1"},
                        json={"format": "rapport.user.v2", "parts": {"memory": {"items": [{"text": ""}]}}})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("parts.memory.items"), r.text


def forget_log_rows(h: Any) -> list[dict[str, Any]]:
    from rapport.core.forget_log import forget_log

    db = h.services.jobs.db
    with db.read() as conn:
        return [dict(r) for r in conn.execute(sa.select(forget_log)).mappings()]


def test_a_restore_from_before_a_forget_is_forgotten_again_by_replay(
    server: Any, make_rapport: Any, tmp_path: Path
) -> None:
    from proxy.forget_replay import log_lines, read_log, replay, saved_log
    from rapport.core.forget_log import forget_log
    from rapport.core.userdata import user_digest

    fill(server, "t1", "alice")
    with admin(server) as client:
        backup = exported(client, "t1", "alice")  # the snapshot a backup taken now would hold
        assert backup is not None
        assert client.post("/admin/users/bob/import", params={"tenant": "t1"}, json=backup).status_code == 201
        before_forget = time.time()
        assert client.delete("/admin/users/alice", params={"tenant": "t1"}).status_code == 200
        [logged] = forget_log_rows(server)
        # The log names the tenant and a digest of the user, never the user id.
        assert logged["tenant"] == "t1" and logged["user_digest"] == user_digest("t1", "alice")
        assert "alice" not in json.dumps(logged)

        # The restore: the backup's data is back (re-imported here, as a restored dump would hold it) ...
        assert client.post("/admin/users/alice/import", params={"tenant": "t1"}, json=backup).status_code == 201
        assert exported(client, "t1", "alice") is not None
    # ... and the log was saved before it, since the restore of the jobs database loses its newest rows.
    saved = tmp_path / "forgets.jsonl"
    saved.write_text("\n".join(log_lines(saved_log(server.settings, before_forget))) + "\n")
    with server.services.jobs.db.write() as conn:
        conn.execute(sa.delete(forget_log))
    server.stop()  # embedded: replay takes the data dir's lock, as a server does

    report = replay(server.settings, before_forget, read_log(saved))
    assert (report.logged, report.restored, report.forgotten) == (1, 1, [("t1", "alice")])

    url = server.settings.database_url
    shared = {"database_url": url.get_secret_value()} if url is not None else {}
    again = make_rapport(data_dir=server.settings.data_dir, memory={"summary_every": 1000}, **shared)
    with admin(again) as client:
        assert exported(client, "t1", "alice") is None
        bob = exported(client, "t1", "bob")
        assert bob is not None and not any(is_empty(section) for section in bob["parts"].values())
    # Replaying again finds nobody left to forget.
    again.stop()
    assert replay(again.settings, before_forget).forgotten == []


def test_the_cli_prints_the_forget_log_and_replays_a_saved_one(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from memory.jobs import JobQueue
    from rapport.core.userdata import user_digest

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    queue = JobQueue(data_dir / "jobs.sqlite3")
    queue.forget_log.append("t1", "alice", at=50.0)
    queue.forget_log.append("t1", "bob", at=10.0)
    asyncio.run(queue.close())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
    env.update(RAPPORT_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               LITELLM_LOCAL_MODEL_COST_MAP="True", COLUMNS="300")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy.cli", "db", *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])

    printed = cli("forget-log", "--since", "20")
    assert printed.returncode == 0, printed.stderr
    [line] = [json.loads(x) for x in printed.stdout.splitlines() if x.strip()]
    assert line == {"tenant": "t1", "user_digest": user_digest("t1", "alice"), "forgotten_at": 50.0}
    saved = tmp_path / "forgets.jsonl"
    saved.write_text(printed.stdout)
    replayed = cli("replay-forgets", "--since", "20", "--log", str(saved))
    assert replayed.returncode == 0, replayed.stderr
    assert "1 forgets logged" in replayed.stdout and "0 users" in replayed.stdout, replayed.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    refused = cli("replay-forgets", "--since", "0", "--log", str(bad))
    assert refused.returncode == 1 and "line 1" in refused.stderr, refused.stderr
