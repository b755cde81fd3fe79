"""Per-stage options resolved in one place (issue 13, point 6): request over model over stage default.

The resolver's precedence table with the stages' real options models; the same table end to end through a
real server (the official `openai` SDK, a named user, memory, RPM and VAS loaded, three models with different
`personalization` entries), read from what each stage reports; a model's bad stage options failing the start
with the field's path; a request's bad option a 400 naming `rapport.<stage>.<field>`, also when the model
gives options for that stage; and /v1/completions, a pass-through, saying for a named user that no stage was
applied and recording nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from memory.service import MemoryOptions
from proxy.app import create_app
from proxy.entrypoints.completions.report import NOT_APPLIED
from proxy.pipeline.context import RapportOptions
from proxy.pipeline.options import StageOptionsResolver
from proxy.settings import ConfigError, RapportSettings
from reasoning.rpm.models import RPMRequestOptions
from reasoning.vas.engine import VASRequest
from tests.conftest import ADMIN_KEY, API_KEY, rapport_settings
from tests.support.helpers import admin, wait_until
from tests.support.servers import ThreadedServer
from tests.support.upstream import ScriptedUpstream

TENANT = "tenant-a"  # the tenant of API_KEY
USER = "alice"
PLUGINS = ("proxy.stages.memory_plugin:build", "proxy.stages.rpm_plugin:build", "proxy.stages.vas_plugin:build")
TUNED = {"memory": {"task": "tuned-task"}, "rpm": {"return_reasoning": True}, "vas": {"beta": 2.5, "mode": "block"}}
OFF = {"memory": False, "rpm": False, "vas": False}


def _model(name: str, url: str, personalization: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"model_name": name, "litellm_params": {"model": "openai/scripted", "api_base": url, "api_key": "sk-up"}}
    if personalization is not None:
        entry["personalization"] = personalization
    return entry


# -- the resolver alone: the whole table, with the stages' real options models ----------------------------


@dataclass
class _Stage:
    name: str
    options_model: type[BaseModel]
    default_on: bool


STAGES = [_Stage("memory", MemoryOptions, True), _Stage("rpm", RPMRequestOptions, False), _Stage("vas", VASRequest, False)]


def _resolver(tmp_path: Path, stages: list[_Stage] = STAGES) -> StageOptionsResolver:
    models = [_model("plain", "http://x/v1"), _model("tuned", "http://x/v1", TUNED), _model("off", "http://x/v1", OFF)]
    settings = RapportSettings(data_dir=str(tmp_path), local={"enabled": False}, model_list=models)
    return StageOptionsResolver(settings, stages)


@pytest.mark.parametrize(
    ("model", "request_options", "expected"),
    [
        # Nobody says: the stage default (memory on, RPM and VAS off), the options model's defaults.
        ("plain", {}, {"memory": (True, "default", {}), "rpm": (False, "default", {}), "vas": (False, "default", {})}),
        # The model says: on with its options.
        ("tuned", {}, {"memory": (True, "model", {"task": "tuned-task"}), "rpm": (True, "model", {"return_reasoning": True}),
                       "vas": (True, "model", {"beta": 2.5, "mode": "block"})}),
        # The request's False beats the model's options (kept, unused); its True keeps them.
        ("tuned", OFF, {"memory": (False, "request", {"task": "tuned-task"}), "rpm": (False, "request", {"return_reasoning": True}),
                        "vas": (False, "request", {"beta": 2.5, "mode": "block"})}),
        ("tuned", {"memory": True, "rpm": True, "vas": True},
         {"memory": (True, "request", {"task": "tuned-task"}), "rpm": (True, "request", {"return_reasoning": True}),
          "vas": (True, "request", {"beta": 2.5, "mode": "block"})}),
        # Field by field: the request's fields over the model's, the model's other fields kept.
        ("tuned", {"memory": {"task": "req-task", "k": 2}, "rpm": {"return_reasoning": False}, "vas": {"mode": "token"}},
         {"memory": (True, "request", {"task": "req-task", "k": 2}), "rpm": (True, "request", {"return_reasoning": False}),
          "vas": (True, "request", {"beta": 2.5, "mode": "token"})}),
        # The model's False beats the stage default; the request's True or dict beats the model's False.
        ("off", {}, {"memory": (False, "model", {}), "rpm": (False, "model", {}), "vas": (False, "model", {})}),
        ("off", {"memory": True, "rpm": {"top_k": 1}, "vas": {"beta": 0.5}},
         {"memory": (True, "request", {}), "rpm": (True, "request", {"top_k": 1}), "vas": (True, "request", {"beta": 0.5})}),
        # The request over the stage default, where the model is silent.
        ("plain", {"memory": False, "rpm": {"mode": "cheap"}},
         {"memory": (False, "request", {}), "rpm": (True, "request", {"mode": "cheap"}), "vas": (False, "default", {})}),
    ],
)
def test_precedence_request_over_model_over_stage_default(
    tmp_path: Path, model: str, request_options: dict[str, Any], expected: dict[str, tuple[bool, str, dict[str, Any]]]
) -> None:
    resolved = _resolver(tmp_path).resolve(model, RapportOptions.model_validate(request_options))
    for stage in STAGES:
        on, decided_by, fields = expected[stage.name]
        got = resolved[stage.name]
        assert (got.on, got.decided_by) == (on, decided_by), stage.name
        assert got.options == stage.options_model(**fields), stage.name


def test_a_stage_on_by_default_is_turned_off_by_the_model_and_back_on_by_the_request(tmp_path: Path) -> None:
    stages = [_Stage("memory", MemoryOptions, True), _Stage("rpm", RPMRequestOptions, True), _Stage("vas", VASRequest, True)]
    resolver = _resolver(tmp_path, stages)
    assert all(s.on for s in resolver.resolve("plain", RapportOptions()).values())
    assert not any(s.on for s in resolver.resolve("off", RapportOptions()).values())
    assert all(s.on for s in resolver.resolve("off", RapportOptions(memory={}, rpm=True, vas={})).values())


# -- end to end: what each stage did, for each layer -------------------------------------------------------


@dataclass
class Server:
    base_url: str
    url: str
    admin_key: str
    upstream: ScriptedUpstream


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    upstream = ScriptedUpstream().start()
    url = upstream.base_url
    settings = rapport_settings(
        tmp_path_factory.mktemp("stage-options"),
        url,
        model_list=[_model("plain", url), _model("tuned", url, TUNED), _model("off", url, OFF)],
        memory={"summary_every": 1000},
        rpm={"construction_mode": "cheap", "request_mode": "cheap"},
    )
    http = ThreadedServer(create_app(settings, PLUGINS), timeout_keep_alive=settings.server.timeout_keep_alive).start()
    try:
        yield Server(f"{http.url}/v1", http.url, ADMIN_KEY, upstream)
    finally:
        http.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def _ran(client: openai.OpenAI, model: str, rapport: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each stage that ran reported. n=2 keeps VAS from decoding (it reports its plan, then steps aside)."""
    result = client.chat.completions.create(
        model=model, user=USER, n=2, messages=[{"role": "user", "content": "What should I cook tonight?"}],
        extra_body={"rapport": {"record": False, **rapport}},
    )
    extension = (result.model_extra or {})["rapport"]
    return {s["name"]: s["detail"] for s in extension["stages"] if s["ran"]}


def test_precedence_end_to_end(client: openai.OpenAI) -> None:
    ran = _ran(client, "plain", {})
    assert set(ran) == {"memory"} and ran["memory"]["task"] != "tuned-task"

    ran = _ran(client, "tuned", {})
    assert set(ran) == {"memory", "rpm", "vas"}
    assert ran["memory"]["task"] == "tuned-task" and ran["rpm"]["return_reasoning"] is True
    assert (ran["vas"]["mode"], ran["vas"]["beta"], ran["vas"]["applied"]) == ("block", 2.5, False)

    assert _ran(client, "tuned", dict(OFF)) == {}

    ran = _ran(client, "tuned", {"memory": {"k": 2}, "rpm": {"top_k": 1}, "vas": {"beta": 1.0}})
    assert ran["memory"]["task"] == "tuned-task" and ran["rpm"]["return_reasoning"] is True
    assert (ran["vas"]["mode"], ran["vas"]["beta"]) == ("block", 1.0)

    ran = _ran(client, "tuned", {"memory": {"task": "req-task"}, "rpm": {"return_reasoning": False}, "vas": {"mode": "token"}})
    assert ran["memory"]["task"] == "req-task" and ran["rpm"]["return_reasoning"] is False
    assert (ran["vas"]["mode"], ran["vas"]["beta"]) == ("token", 2.5)

    assert _ran(client, "off", {}) == {}
    ran = _ran(client, "off", {"memory": True, "rpm": {"top_k": 1}, "vas": {"beta": 0.5}})
    assert set(ran) == {"memory", "rpm", "vas"} and ran["vas"]["beta"] == 0.5


@pytest.mark.parametrize(
    ("model", "rapport", "param"),
    [
        ("plain", {"memory": {"k": -1}}, "rapport.memory.k"),
        # The model gives memory options: the merged options fail on the request's field, named as the request's.
        ("tuned", {"memory": {"k": "many"}}, "rapport.memory.k"),
        ("tuned", {"memory": {"bogus": 1}}, "rapport.memory.bogus"),
        ("plain", {"rpm": {"top_k": 99}}, "rapport.rpm.top_k"),
        ("tuned", {"rpm": {"mode": "psychic"}}, "rapport.rpm.mode"),
        ("plain", {"vas": {"beta": -1}}, "rapport.vas.beta"),
        ("tuned", {"vas": {"weights": {"warm": "very"}}}, "rapport.vas.weights.warm"),
    ],
)
def test_bad_request_option_is_400_naming_it(client: openai.OpenAI, server: Server, model: str, rapport: dict[str, Any], param: str) -> None:
    server.upstream.reset()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=model, user=USER, messages=[{"role": "user", "content": "hi"}], extra_body={"rapport": rapport}
        )
    body: dict[str, Any] = err.value.body  # type: ignore[assignment]
    assert body["param"] == param and body["type"] == "invalid_request_error" and param in body["message"]
    assert server.upstream.requests == []


def test_bad_request_option_is_400_on_responses_and_completions_too(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tuned", input="hi", user=USER, extra_body={"rapport": {"memory": {"k": -1}}})
    assert err.value.body["param"] == "rapport.memory.k"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="plain", prompt="hi", user=USER, extra_body={"rapport": {"rpm": {"top_k": -1}}})
    assert err.value.body["param"] == "rapport.rpm.top_k"  # type: ignore[index]


def test_bad_model_options_fail_the_start_naming_the_path(tmp_path: Path) -> None:
    settings = rapport_settings(tmp_path, "http://127.0.0.1:9/v1")
    settings.model_list.append(settings.model_list[0].model_copy(update={"model_name": "second"}))
    settings.model_list[1].personalization = settings.model_list[1].personalization.model_copy(
        update={"rpm": {"k": 3}, "vas": {"beta": -2}}
    )
    with pytest.raises(ConfigError) as err:
        create_app(settings, ("proxy.stages.rpm_plugin:build", "proxy.stages.vas_plugin:build"))
    message = str(err.value)
    assert "model_list[1].personalization.rpm.k" in message and "model_list[1].personalization.vas.beta" in message
    assert "model_list[0]" not in message


def test_model_options_beyond_the_servers_caps_fail_the_start(tmp_path: Path) -> None:
    settings = rapport_settings(tmp_path, "http://127.0.0.1:9/v1")
    settings.model_list[0].personalization = settings.model_list[0].personalization.model_copy(
        update={"vas": {"best_of": 64}}
    )
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.personalization\.vas\.best_of: best_of=64 is above"):
        create_app(settings, ("proxy.stages.vas_plugin:build",))


def test_a_misspelt_stage_in_a_model_fails_the_settings() -> None:
    with pytest.raises(ValueError, match=r"personalization\.memroy"):
        RapportSettings(local={"enabled": False}, model_list=[_model("m", "http://x/v1", {"memroy": True})])


# -- /v1/completions: a pass-through that says so -----------------------------------------------------------


def test_completions_with_a_named_user_reports_no_stage_applied_and_records_nothing(
    client: openai.OpenAI, server: Server
) -> None:
    server.upstream.reset()
    prompt = "Remember that my favourite colour is teal."
    raw = client.completions.with_raw_response.create(
        model="tuned", prompt=prompt, user=USER, max_tokens=5, extra_body={"rapport": {"vas": False}}
    )
    assert raw.headers["x-rapport-stages"] == "none"
    result = raw.parse()
    extension = (result.model_extra or {})["rapport"]
    assert extension["user"] == USER
    # The stages on for this model and request, each not applied and why; VAS was turned off by the request.
    assert {s["name"]: (s["ran"], s["detail"]) for s in extension["stages"]} == {
        "memory": (False, {"applied": False, "reason": NOT_APPLIED}),
        "rpm": (False, {"applied": False, "reason": NOT_APPLIED}),
    }
    sent = server.upstream.requests[0].json
    assert sent["prompt"] == prompt and "rapport" not in sent and sent["user"] == USER
    assert result.choices[0].text == f"completed: {prompt}"

    stream = client.completions.create(model="plain", prompt=prompt, user=USER, max_tokens=5, stream=True)
    chunks = list(stream)
    first = chunks[0].model_extra or {}
    assert [s["name"] for s in first["rapport"]["stages"]] == ["memory"]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == f"completed: {prompt}"

    # Nothing of the completions was recorded: a chat recorded after it is the user's only memory.
    client.chat.completions.create(model="plain", user=USER, messages=[{"role": "user", "content": "I live in Oslo."}])
    with admin(server) as a:
        def listed() -> list[str]:
            r = a.get(f"/admin/users/{USER}/memories", params={"tenant": TENANT})
            assert r.status_code == 200, r.text
            return [m["text"] for m in r.json()["data"]]

        assert wait_until(listed) == ["I live in Oslo."]


def test_completions_without_a_user_is_unchanged(server: Server) -> None:
    server.upstream.reset()
    r = httpx.post(f"{server.base_url}/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                   json={"model": "plain", "prompt": "hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text
    assert "rapport" not in r.json() and "x-rapport-stages" not in r.headers
