"""The Python SDK against a real Rapport server: openai client bound to a user, typed admin namespaces."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from rapport import AsyncRapport, NotFoundError, Rapport, RapportError
from tests.memory.test_proxy import MEMORY_ONLY, TENANT
from tests.support.upstream import Reply


def test_sdk_imports_no_server_dependencies() -> None:
    code = (
        "import sys, rapport\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('proxy', 'memory', 'reasoning', 'chromadb', 'torch', 'fastapi', 'sentence_transformers', 'litellm')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sync_sdk_roundtrip(make_rapport: Any, scripted_upstream: Any) -> None:
    h = make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000})
    rp = Rapport(h.url + "/v1", api_key=h.api_key, admin_key=h.admin_key, tenant=TENANT)
    chat = rp.openai(user="sam")
    chat.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "I am a night owl who codes in OCaml."}]
    )
    assert scripted_upstream.requests[0].headers.get("x-rapport-user") is None  # not leaked upstream

    wait = __import__("tests.memory.test_proxy", fromlist=["wait_until"]).wait_until
    listed = wait(lambda: rp.memories.list("sam").data)
    assert listed[0].text == "I am a night owl who codes in OCaml." and listed[0].tenant == TENANT

    added = rp.memories.add("sam", "My cat is called Miso.")
    assert rp.memories.search("sam", "pets", limit=1)[0].id == added.id
    assert rp.memories.update("sam", added.id, text="My dog is called Miso.").text == "My dog is called Miso."
    assert rp.memories.get("sam", added.id).text == "My dog is called Miso."
    assert rp.users.get("sam").items == 2
    assert [u.user for u in rp.users.list(tenant=TENANT).data] == ["sam"]

    scripted_upstream.script(Reply(content="Sam is a night owl and codes in OCaml."))
    [job_id] = rp.summaries.regenerate("sam")
    job = rp.jobs.wait(job_id, timeout=60, interval=0.05)
    assert job.status == "succeeded" and job.done
    assert rp.summaries.list("sam")[0].text == "Sam is a night owl and codes in OCaml."
    assert rp.jobs.list(kind="memory.summary").total >= 1

    exported = rp.users.export("sam")
    assert rp.users.import_("sam2", exported).items == 2
    assert rp.memories.delete("sam", added.id)
    with pytest.raises(NotFoundError):
        rp.memories.get("sam", added.id)
    assert rp.users.forget("sam").removed["memory"]["items"] == 1
    with pytest.raises(NotFoundError):
        rp.users.get("sam")
    with pytest.raises(RapportError) as err:
        rp.memories.add("sam", "")
    assert err.value.status == 400 and err.value.type == "invalid_request_error"
    rp.close()

    no_admin = Rapport(h.url, api_key=h.api_key, admin_key=h.api_key)
    with pytest.raises(RapportError) as denied:
        no_admin.users.list()
    assert denied.value.status == 403


async def test_async_sdk(make_rapport: Any, scripted_upstream: Any) -> None:
    h = make_rapport(plugins=MEMORY_ONLY, memory={"summary_every": 1000})
    async with AsyncRapport(h.url, api_key=h.api_key, admin_key=h.admin_key, tenant=TENANT) as rp:
        added = await rp.memories.add("ana", "I prefer answers in Portuguese.")
        chat = rp.openai(user="ana")
        await chat.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Which language do I like answers in?"}]
        )
        system = scripted_upstream.requests[0].json["messages"][0]["content"]
        assert "I prefer answers in Portuguese." in system
        assert (await rp.memories.search("ana", "language", limit=1, source="admin"))[0].id == added.id
        profile = await rp.users.get("ana")
        assert profile.items >= 1
        jobs = await rp.jobs.list()
        assert jobs.total >= 0
        forgotten = await rp.users.forget("ana")
        assert forgotten.removed["memory"]["items"] >= 1
