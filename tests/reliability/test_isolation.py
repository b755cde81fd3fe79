"""Isolation as a property (issue 6 item 2; OWASP LLM02, LLM08).

hypothesis drives random sequences of chats, admin adds, edits, imports (some claiming another owner),
RPM history imports that are built into features, factors and reasoning paths, VAS value-weight changes and
forgets over two tenants x two user ids (the same ids in both tenants). Every text carries a unique marker
(and every VAS profile unique numbers); the invariant: no marker of one (tenant, user) ever appears in
another's composed prompt (memory block and RPM conditioning alike), semantic search, memory list, export
(items and summaries, and every other store's section), RPM history, features, factors or paths, or the tenant's user list; each user's VAS
profile is exactly the last one set for that user; and each user's own data is all there (nothing lost,
nothing forgotten comes back).

RPM builds run in `cheap` mode (keyphrase features, template paths: no LLM call), so a build is fast and
deterministic; its paths quote the imported response, so a path carries its entry's marker.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from tests.conftest import ADMIN_KEY, API_KEY, API_KEY_B, rapport_settings
from tests.support.postgres import PostgresServer
from tests.support.servers import ThreadedServer
from tests.support.upstream import ScriptedUpstream

TENANTS = {"tenant-a": API_KEY, "tenant-b": API_KEY_B}
NAMES = ("alice", "bob")
VALUE_MODELS = ("concise", "formal")
MARKER = re.compile(r"mk\d+x\d+")
# Up to the end of its line (a real newline, or the escaped one of a repr'd message list).
OWN_FEATURES = re.compile(r"Features of the new input:[^\n\\]*")
_example = itertools.count()
_marker = itertools.count()


@pytest.fixture(scope="module", params=["embedded", "shared"])
def server(
    request: pytest.FixtureRequest, _scripted_session: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """The servers that requests are spread over: one on the embedded default, or two replicas (separate data
    dirs) on one PostgreSQL (`database_url`), taking requests in turn."""
    shared: dict[str, Any] = {}
    database = None
    if request.param == "shared":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        database = postgres.create_database()
        shared = {"database_url": postgres.url(database)}
    servers = []
    _scripted_session.reset()
    try:
        for _ in range(2 if shared else 1):
            settings = rapport_settings(
                tmp_path_factory.mktemp("isolation"),
                _scripted_session.base_url,
                # Summaries every two items: the scripted upstream echoes the summary prompt, so a summary
                # holds exactly the items it was built from, and a leak into it shows.
                memory={"top_k": 20, "token_budget": 8000, "summary_every": 2, "mmr_lambda": 1.0},
                rpm={"construction_mode": "cheap", "request_mode": "cheap", "top_k": 20, "max_factors_in_prompt": 50},
                # Named value models make weights settable; nothing serves them (VAS is never on in these chats).
                vas={"value_models": [{"name": n, "backend": "vllm", "url": "http://127.0.0.1:9"} for n in VALUE_MODELS]},
                **shared,
            )
            servers.append(ThreadedServer(create_app(settings)).start())
        yield [srv.url for srv in servers]
    finally:
        for srv in servers:
            srv.stop()
        if database is not None:
            postgres.drop_database(database)


class World:
    def __init__(self, urls: list[str], upstream: ScriptedUpstream) -> None:
        self.urls = urls
        self._turn = itertools.count()
        self.upstream = upstream
        self.http = httpx.Client(timeout=60)
        n = next(_example)
        self.users = {name: f"x{n}-{name}" for name in NAMES}
        self.live: dict[tuple[str, str], set[str]] = {}
        self.ever: dict[tuple[str, str], set[str]] = {}
        self.rpm_live: dict[tuple[str, str], set[str]] = {}
        self.vas: dict[tuple[str, str], dict[str, Any]] = {}
        self.jobs: list[str] = []

    @property
    def url(self) -> str:
        """The next server in turn: with two replicas, consecutive requests (a write and the read that checks
        it) go to different ones."""
        return self.urls[next(self._turn) % len(self.urls)]

    def principals(self) -> list[tuple[str, str]]:
        return [(t, u) for t in TENANTS for u in self.users.values()]

    def marker(self, owner: tuple[str, str]) -> str:
        mark = f"mk{next(_marker)}x{len(self.ever)}"
        self.ever.setdefault(owner, set()).add(mark)
        return mark

    def admin(self, method: str, path: str, tenant: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(
            method,
            f"{self.url}/admin/users/{path}".rstrip("/"),
            params={"tenant": tenant, **kwargs.pop("params", {})},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            **kwargs,
        )

    def chat(self, tenant: str, user: str, text: str, *, record: bool, rpm: bool = False) -> dict[str, Any]:
        options: dict[str, Any] = {"record": record}
        if rpm:
            options["rpm"] = {"mode": "cheap", "top_k": 20}
        response = self.http.post(
            f"{self.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {TENANTS[tenant]}", "x-rapport-user": user},
            json={"model": "test-model", "messages": [{"role": "user", "content": text}], "rapport": options},
        )
        assert response.status_code == 200, response.text
        return response.json()

    def items(self, tenant: str, user: str) -> list[dict[str, Any]]:
        response = self.admin("GET", f"{user}/memories", tenant, params={"limit": 1000})
        assert response.status_code == 200, response.text
        return response.json()["data"]

    # -- operations -----------------------------------------------------------------------------------

    def apply(self, op: tuple[Any, ...]) -> None:
        kind, tenant, name = op[0], op[1], self.users[op[2]]
        owner = (tenant, name)
        if kind == "chat":
            mark = self.marker(owner)
            self.chat(tenant, name, f"I like {mark} very much", record=True)
            self.live.setdefault(owner, set()).add(mark)
            # Recording happens after the response, off the request path: wait until it is stored.
            deadline = time.monotonic() + 30
            while not any(mark in it["text"] for it in self.items(tenant, name)):
                assert time.monotonic() < deadline, f"chat turn {mark} never recorded"
                time.sleep(0.05)
        elif kind == "add":
            mark = self.marker(owner)
            response = self.admin("POST", f"{name}/memories", tenant, json={"text": f"note {mark}"})
            assert response.status_code == 201, response.text
            self.live.setdefault(owner, set()).add(mark)
        elif kind == "edit":
            items = self.items(tenant, name)
            if items:
                target = items[0]
                mark = self.marker(owner)
                response = self.admin("PATCH", f"{name}/memories/{target['id']}", tenant, json={"text": f"edited {mark}"})
                assert response.status_code == 200, response.text
                self.live[owner] -= set(MARKER.findall(target["text"]))
                self.live[owner].add(mark)
        elif kind == "import":
            # The import claims another owner in its items: it must land with the user in the URL, or nowhere.
            claimed_tenant, claimed_user = op[3], self.users[op[4]]
            mark = self.marker(owner)
            body = {"items": [{"text": f"imported {mark}", "tenant": claimed_tenant, "user": claimed_user}]}
            response = self.admin("POST", f"{name}/import", tenant, json=body)
            assert response.status_code in (201, 400, 422), response.text
            if response.status_code == 201:
                self.live.setdefault(owner, set()).add(mark)
        elif kind == "rpm":
            # Labelled history, built at once into features ("cuisine: <marker> food"), factors and paths.
            marks = [self.marker(owner) for _ in range(2)]
            history: dict[str, Any] = {
                "items": [{"input": f"cuisine: {m} food, please", "response": f"answer {m}"} for m in marks],
                "build": True,
            }
            response = self.http.post(
                f"{self.url}/admin/users/{name}/history",
                params={"tenant": tenant},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
                json=history,
            )
            assert response.status_code == 201, response.text
            self.rpm_live.setdefault(owner, set()).update(marks)
            self.wait_job(response.json()["job_id"])
        elif kind == "vas":
            # Unique numbers per profile: a weight or beta seen elsewhere would be a leak.
            n = next(_marker)
            weights = {VALUE_MODELS[0]: round(1.0 + n / 1000.0, 3), VALUE_MODELS[1]: round(-1.0 - n / 1000.0, 3)}
            profile = {"weights": weights, "beta": round(2.0 + n / 1000.0, 3)}
            response = self.http.put(
                f"{self.url}/admin/vas/users/{name}", params={"tenant": tenant},
                headers={"authorization": f"Bearer {ADMIN_KEY}"}, json=profile,
            )  # fmt: skip
            assert response.status_code == 200, response.text
            self.vas[owner] = profile
        elif kind == "forget":
            response = self.admin("DELETE", name, tenant)
            assert response.status_code == 200, response.text
            self.live[owner] = set()
            self.rpm_live[owner] = set()
            self.vas.pop(owner, None)

    def wait_job(self, job_id: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            job = self.http.get(f"{self.url}/admin/jobs/{job_id}", headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert job.status_code == 200, job.text
            if job.json()["status"] in ("succeeded", "failed"):
                assert job.json()["status"] == "succeeded", job.json()
                return
            assert time.monotonic() < deadline, f"RPM build {job_id} never finished: {job.json()}"
            time.sleep(0.05)

    # -- the invariant ------------------------------------------------------------------------------

    def prompt_for(self, text: str) -> str:
        """Everything the upstream received for the chat whose user message is `text`, but that message."""
        for seen in reversed(list(self.upstream.requests)):
            messages = seen.json.get("messages") or []
            if messages and messages[-1].get("content") == text:
                return str(messages[:-1]) + str({k: v for k, v in seen.json.items() if k != "messages"})
        raise AssertionError(f"the upstream never received {text!r}")

    def rpm_view(self, tenant: str, user: str, what: str) -> set[str]:
        response = self.http.get(
            f"{self.url}/admin/users/{user}/rpm/{what}".rstrip("/"),
            params={"tenant": tenant},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert response.status_code == 200, response.text
        return set(MARKER.findall(response.text))

    def check(self) -> None:
        for owner in self.principals():
            tenant, user = owner
            own_ever = self.ever.get(owner, set())
            others = set().union(set(), *(m for p, m in self.ever.items() if p != owner)) - own_ever
            seen: dict[str, set[str]] = {}
            items = self.items(tenant, user)
            assert all(it["tenant"] == tenant and it["user"] == user for it in items)
            seen["memory list"] = {m for it in items for m in MARKER.findall(it["text"])}
            # Exactly the live items: nothing lost, nothing foreign, nothing forgotten comes back.
            assert seen["memory list"] == self.live.get(owner, set()), (owner, seen["memory list"])
            response = self.admin("GET", f"{user}/export", tenant)
            assert response.status_code in (200, 404), response.text
            empty = {"parts": {"memory": {"items": [], "summaries": []}}}
            export = response.json() if response.status_code == 200 else empty
            if response.status_code == 404:
                assert not self.live.get(owner), f"{owner}: export is 404 but items are live"
            seen["export"] = set(MARKER.findall(str(export["parts"]["memory"]["items"])))
            seen["summaries"] = set(MARKER.findall(str(export["parts"]["memory"]["summaries"])))
            # Every store's section of the export (the user-data registry's parts), not memory's alone.
            seen["export, every part"] = set(MARKER.findall(str(export["parts"])))
            for what in ("history", "features", "factors", "paths"):
                seen[f"rpm {what}"] = self.rpm_view(tenant, user, what)
            # Every built entry is there: its input in the history, its response in a path.
            own_rpm = self.rpm_live.get(owner, set())
            assert seen["rpm history"] == own_rpm, (owner, seen["rpm history"], own_rpm)
            assert seen["rpm paths"] == own_rpm, (owner, seen["rpm paths"], own_rpm)
            assert seen["rpm features"] == own_rpm, (owner, seen["rpm features"], own_rpm)
            assert seen["rpm factors"] <= own_rpm
            summary = self.http.get(
                f"{self.url}/admin/users/{user}/rpm", params={"tenant": tenant},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            ).json()  # fmt: skip
            assert summary["paths"] == len(own_rpm), (owner, summary)
            profile = self.http.get(
                f"{self.url}/admin/vas/users/{user}", params={"tenant": tenant},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            )  # fmt: skip
            if owner in self.vas:
                assert profile.status_code == 200, profile.text
                got = profile.json()
                assert (got["tenant"], got["user"]) == owner
                assert {"weights": got["weights"], "beta": got["beta"]} == self.vas[owner], (owner, got)
            else:
                assert profile.status_code == 404, (owner, profile.text)
            # Ask for other users' markers by name, in search and in a chat: nothing of theirs may come back.
            for probe in sorted(others)[:1] or ["anything"]:
                search = self.admin("GET", f"{user}/memories", tenant, params={"q": f"I like {probe}"})
                seen.setdefault("search", set()).update(MARKER.findall(str(search.json()["data"])))
                question = f"tell me about {probe} ({next(_marker)})"
                # RPM on for the probe: its conditioning (factors, retrieved paths) lands in the prompt too.
                self.chat(tenant, user, question, record=False, rpm=True)
                # RPM restates the question's own features ("topic=<probe>"): that line is the asker's text.
                prompt = OWN_FEATURES.sub("", self.prompt_for(question))
                seen.setdefault("prompt", set()).update(MARKER.findall(prompt))
            for where, marks in seen.items():
                leaked = marks & others
                assert not leaked, f"{owner}: markers of other users in its {where}: {sorted(leaked)}"
        for tenant in TENANTS:
            listed = self.admin("GET", "", tenant, params={"limit": 1000}).json()["data"]
            assert all(row["tenant"] == tenant for row in listed), listed


OPS = st.one_of(
    st.tuples(st.just("chat"), st.sampled_from(list(TENANTS)), st.sampled_from(NAMES)),
    st.tuples(st.just("add"), st.sampled_from(list(TENANTS)), st.sampled_from(NAMES)),
    st.tuples(st.just("edit"), st.sampled_from(list(TENANTS)), st.sampled_from(NAMES)),
    st.tuples(
        st.just("import"),
        st.sampled_from(list(TENANTS)),
        st.sampled_from(NAMES),
        st.sampled_from(list(TENANTS)),
        st.sampled_from(NAMES),
    ),
    st.tuples(st.just("rpm"), st.sampled_from(list(TENANTS)), st.sampled_from(NAMES)),
    st.tuples(st.just("vas"), st.sampled_from(list(TENANTS)), st.sampled_from(NAMES)),
    st.tuples(st.just("forget"), st.sampled_from(list(TENANTS)), st.sampled_from(NAMES)),
)


@given(ops=st.lists(OPS, min_size=2, max_size=6))
# Always run once with RPM and VAS data for the same user id in both tenants, whatever hypothesis draws.
@example(ops=[("rpm", "tenant-a", "alice"), ("vas", "tenant-a", "alice"), ("rpm", "tenant-b", "alice"),
              ("vas", "tenant-b", "bob"), ("chat", "tenant-b", "alice")])
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    # Each example runs real requests; shrinking a failure would take minutes, and the report names the owner.
    phases=[Phase.explicit, Phase.generate],
)
def test_no_user_ever_sees_another_users_data(
    server: list[str], _scripted_session: ScriptedUpstream, ops: list[Any]
) -> None:
    world = World(server, _scripted_session)
    try:
        for op in ops:
            world.apply(op)
        world.check()
    finally:
        world.http.close()
