"""Rapport is never an open relay or an SSRF hop, and never leaks its upstream credentials (issue 6 item 4;
OWASP LLM02, LLM10).

A second scripted upstream plays the attacker's server: whatever a client puts in the request, nothing may
reach it, and the configured upstream sees Rapport's own key, never the client's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from proxy.entrypoints.common import FORBIDDEN_FIELDS
from tests.support.upstream import ScriptedUpstream

MSG = [{"role": "user", "content": "hi"}]
PATHS = [pytest.param(True, id="fast_path"), pytest.param(False, id="litellm")]


@pytest.fixture()
def make_rapport(make_rapport: Callable[..., Any]) -> Callable[..., Any]:
    return functools.partial(make_rapport, plugins=())


@pytest.fixture(scope="module")
def attacker() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


def post(rapport: Any, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(
            f"{rapport.url}{path}", headers={"authorization": f"Bearer {rapport.api_key}", **headers}, json=body
        )


@pytest.mark.parametrize("field", sorted(FORBIDDEN_FIELDS))
@pytest.mark.parametrize("fast_path", PATHS)
def test_routing_and_credential_fields_are_refused(make_rapport, scripted_upstream, attacker, field, fast_path):
    attacker.reset()
    rapport = make_rapport(upstream={"fast_path": fast_path})
    value: Any = attacker.base_url if field != "extra_headers" else {"host": "evil"}
    response = post(rapport, "/v1/chat/completions", {"model": "test-model", "messages": MSG, field: value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == field
    assert attacker.requests == [] and scripted_upstream.requests == []


def _steering_fields(attacker: ScriptedUpstream) -> dict[str, Any]:
    """litellm keyword arguments that, passed as litellm arguments, would steer routing, credentials, retries
    or logging. On the litellm path they must travel to the configured upstream as plain body fields."""
    return {
        "organization": "evil-org",
        "headers": {"x-evil": "1", "authorization": "Bearer stolen"},
        "model_list": [
            {"model_name": "scripted", "litellm_params": {"model": "openai/scripted", "api_base": attacker.base_url}}
        ],
        "aws_bedrock_runtime_endpoint": attacker.base_url,
        "proxy": attacker.base_url,
        "client": "not-a-client",
        "litellm_logging_obj": "x",
        "max_retries": 9,
        "callbacks": ["langfuse"],
        "success_callback": ["langfuse"],
        "mock_timeout": True,
        "mock_tool_calls": [{"id": "x"}],
        "deployment_id": "elsewhere",
        "additional_drop_params": ["messages"],
    }


@pytest.mark.parametrize("fast_path", PATHS)
def test_litellm_keyword_arguments_cannot_steer_the_call(make_rapport, scripted_upstream, attacker, fast_path):
    attacker.reset()
    rapport = make_rapport(upstream={"fast_path": fast_path})
    for field, value in _steering_fields(attacker).items():
        scripted_upstream.reset()
        response = post(rapport, "/v1/chat/completions", {"model": "test-model", "messages": MSG, field: value})
        assert response.status_code == 200, (field, response.text)
        assert response.json()["choices"][0]["message"]["content"] == "echo: hi", field
        assert len(scripted_upstream.requests) == 1, field
        seen = scripted_upstream.requests[0]
        # The field reached the configured upstream as data, exactly as the client sent it...
        assert seen.json.get(field) == value, field
        assert seen.json["messages"] == MSG
        # ...and steered nothing: no injected header, no other organization, Rapport's own key.
        assert "x-evil" not in seen.headers and "openai-organization" not in seen.headers, field
        assert seen.headers["authorization"] == "Bearer sk-up", field
    assert attacker.requests == []


@pytest.mark.parametrize("fast_path", PATHS)
def test_client_key_never_reaches_the_upstream(make_rapport, scripted_upstream, fast_path):
    rapport = make_rapport(upstream={"fast_path": fast_path})
    post(rapport, "/v1/chat/completions", {"model": "test-model", "messages": MSG}, **{"x-api-key": "also-secret"})
    post(rapport, "/v1/completions", {"model": "test-model", "prompt": "x"})
    post(rapport, "/v1/embeddings", {"model": "test-model", "input": "x"})
    assert len(scripted_upstream.requests) == 3
    for seen in scripted_upstream.requests:
        assert seen.headers["authorization"] == "Bearer sk-up"
        text = repr(seen.headers) + repr(seen.json)
        assert rapport.api_key not in text and "also-secret" not in text


@pytest.mark.parametrize(
    "model",
    ["http://169.254.169.254/latest/meta-data", "openai/gpt-4o", "scripted", "test-model ", "../test-model"],
)
def test_model_must_be_a_configured_alias(make_rapport, scripted_upstream, model):
    rapport = make_rapport()
    for path, body in [
        ("/v1/chat/completions", {"model": model, "messages": MSG}),
        ("/v1/completions", {"model": model, "prompt": "x"}),
        ("/v1/embeddings", {"model": model, "input": "x"}),
    ]:
        response = post(rapport, path, body)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "model_not_found"
    assert scripted_upstream.requests == []


def test_rapport_options_cannot_carry_routing(make_rapport, scripted_upstream, attacker):
    attacker.reset()
    rapport = make_rapport()
    body = {"model": "test-model", "messages": MSG, "rapport": {"api_base": attacker.base_url}}
    response = post(rapport, "/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("rapport")
    assert attacker.requests == [] and scripted_upstream.requests == []
