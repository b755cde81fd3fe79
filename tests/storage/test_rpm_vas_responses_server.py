"""RPM, VAS profiles and stored responses through two real Rapport servers (separate data dirs) on one real
PostgreSQL: written through replica A, read, continued and forgotten through replica B, and nothing of them in
either data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.helpers import admin, wait_until
from tests.support.upstream import Reply

TENANT = "tenant-a"  # the tenant of the test API key
MODEL = "test-model"
HISTORY = [{"input": "Rate: Blue Fin, a seafood restaurant, expensive.", "response": "5", "task": "rating"}]
EXTRACTION = '{"features": [{"name": "cuisine", "value": "seafood"}, {"name": "price", "value": "expensive"}]}'
PATH = '{"reasoning": "Seafood is their favourite and price does not stop them, so 5."}'


def replica(make_rapport: Any, url: str, data_dir: Path) -> Any:
    return make_rapport(data_dir=data_dir, database_url=url, memory={"summary_every": 1000})


def client_for(h: Any, user: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url, api_key=h.api_key, default_headers={"X-Rapport-User": user},
                         max_retries=0)


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()


def vas_store(h: Any) -> Any:
    [plugin] = [p for p in h.services.plugins if p.name == "vas"]
    return plugin.engine.store


def test_rpm_vas_and_responses_are_shared_by_two_replicas(
    postgres_url: str, make_rapport: Any, scripted_upstream: Any, tmp_path: Path
) -> None:
    # postgres_url first: its database is dropped after the servers stop, not under them.
    a = replica(make_rapport, postgres_url, tmp_path / "a")
    b = replica(make_rapport, postgres_url, tmp_path / "b")
    rpm = f"/admin/users/alice/rpm?tenant={TENANT}"

    # RPM: history imported on A, built by whichever replica's worker claims the job, inspected on B.
    scripted_upstream.script(Reply(content=EXTRACTION), Reply(content=PATH))
    with admin(a) as on_a, admin(b) as on_b:
        imported = ok(on_a.post(f"/admin/users/alice/history?tenant={TENANT}", json={"items": HISTORY}))
        assert imported["imported"] == 1
        wait_until(lambda: ok(on_b.get(rpm))["entries"] == {"done": 1}, within=60)
        [entry] = ok(on_b.get(f"/admin/users/alice/rpm/history?tenant={TENANT}"))["data"]
        assert entry["input"] == HISTORY[0]["input"]
        assert {f["name"] for f in ok(on_b.get(f"/admin/users/alice/rpm/features?tenant={TENANT}"))["data"]} == {
            "cuisine", "price"}
        assert len(ok(on_b.get(f"/admin/users/alice/rpm/paths?tenant={TENANT}"))["data"]) == 1

        # VAS: a profile written by A's store is what B's admin API returns.
        vas_store(a).put(TENANT, "alice", {"sentiment": 0.5}, 2.0)
        assert ok(on_b.get("/admin/vas/users/alice", params={"tenant": TENANT}))["weights"] == {"sentiment": 0.5}

    # Stored responses: created on A, retrieved and continued on B.
    scripted_upstream.script(Reply(content="Noted: you like seafood."), Reply(content="Blue Fin it is."))
    first = client_for(a, "alice").responses.create(model=MODEL, input="I like seafood.")
    on_b_client = client_for(b, "alice")
    assert on_b_client.responses.retrieve(first.id).output_text == "Noted: you like seafood."
    second = on_b_client.responses.create(model=MODEL, input="Where should I eat?", previous_response_id=first.id)
    assert second.output_text == "Blue Fin it is."
    continued = [r.json for r in scripted_upstream.requests if r.path.endswith("/chat/completions")][-1]
    contents = [m["content"] for m in continued["messages"] if m["role"] != "system"]
    assert contents[-3:] == ["I like seafood.", "Noted: you like seafood.", "Where should I eat?"]

    # Forget on B: A has nothing of alice left in any of the three stores.
    with admin(b) as on_b:
        removed = ok(on_b.delete("/admin/users/alice", params={"tenant": TENANT}))["removed"]
    assert removed["rpm"]["entries"] == 1 and removed["vas"]["profiles"] == 1 and removed["responses"]["responses"] == 2
    with admin(a) as on_a:
        assert ok(on_a.get(rpm))["entries"] == {}
        assert ok(on_a.get(f"/admin/users/alice/rpm/features?tenant={TENANT}"))["data"] == []
        assert on_a.get("/admin/vas/users/alice", params={"tenant": TENANT}).status_code == 404
    for response_id in (first.id, second.id):
        with pytest.raises(openai.NotFoundError):
            client_for(a, "alice").responses.retrieve(response_id)

    for data_dir in (tmp_path / "a", tmp_path / "b"):
        kept = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.sqlite3*"))
        assert not [p for p in kept if p.startswith(("rpm", "vas", "responses"))], kept
