"""Error paths against the scripted upstream, through the official openai SDK and raw HTTP (issue 2, item 10).

Every failure must leave Rapport as OpenAI's error object with the right status, on the httpx fast path and
through litellm alike; a failing stream must end (never hang), and a client that leaves must cancel the upstream.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.support.upstream import Reply, ScriptedUpstream

MSG = [{"role": "user", "content": "hello"}]
# The upstream paths: the direct fast path on each transport, and litellm.
PATHS = [
    pytest.param({"fast_path": True, "transport": "aiohttp"}, id="fast_path"),
    pytest.param({"fast_path": True, "transport": "httpx"}, id="fast_path_httpx"),
    pytest.param({"fast_path": False}, id="litellm"),
]


@pytest.fixture()
def make_rapport(make_rapport: Callable[..., Any]) -> Callable[..., Any]:
    """The proxy core alone: these paths never reach a personalization stage (no user is named), and the
    plugins' own failure modes are tested with them."""
    return functools.partial(make_rapport, plugins=())


def assert_error_shape(payload: Any, *, status: int | None = None) -> dict[str, Any]:
    """The OpenAI error object: exactly message/type/param/code under `error`, message and type non-empty."""
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert "Traceback" not in error["message"]
    return error


def models(upstream: ScriptedUpstream, *, timeout: float = 30, fallback: bool = False) -> list[dict[str, Any]]:
    """A model list on the scripted upstream; with `fallback`, `test-model` falls back to `backup`."""
    entries: list[dict[str, Any]] = [
        {
            "model_name": "test-model",
            "litellm_params": {"model": "openai/scripted", "api_base": upstream.base_url, "api_key": "sk-up", "timeout": timeout},
            "fallbacks": ["backup"] if fallback else [],
        }
    ]
    if fallback:
        entries.append(
            {
                "model_name": "backup",
                "litellm_params": {"model": "openai/backup", "api_base": upstream.base_url, "api_key": "sk-up", "timeout": timeout},
            }
        )
    return entries


def sdk(rapport: Any, *, key: str | None = None, timeout: float = 20.0) -> openai.OpenAI:
    # The SDK's own retries are off: the retries under test are Rapport's.
    return openai.OpenAI(base_url=rapport.base_url, api_key=key or rapport.api_key, max_retries=0, timeout=timeout)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- upstream failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_path", PATHS)
def test_upstream_500_becomes_502_after_retries(make_rapport, scripted_upstream, upstream_path):
    rapport = make_rapport(upstream=upstream_path)
    scripted_upstream.script(*[Reply(kind="error", status=500)] * 5)
    with pytest.raises(openai.InternalServerError) as info:
        sdk(rapport).chat.completions.create(model="test-model", messages=MSG)
    assert info.value.status_code == 502
    error = assert_error_shape(info.value.response.json())
    assert error["type"] == "upstream_error" and error["code"] == "upstream_error"
    # retries=2 in the test settings: one try plus two retries, and no hidden retries inside litellm.
    assert len(scripted_upstream.requests) == 3


@pytest.mark.parametrize("upstream_path", PATHS)
def test_upstream_429_then_success_is_retried_transparently(make_rapport, scripted_upstream, upstream_path):
    rapport = make_rapport(upstream=upstream_path)
    scripted_upstream.script(Reply(kind="error", status=429, headers={"retry-after": "0"}), Reply(content="after the wait"))
    result = sdk(rapport).chat.completions.create(model="test-model", messages=MSG)
    assert result.choices[0].message.content == "after the wait"
    assert len(scripted_upstream.requests) == 2


def test_upstream_429_every_time_surfaces_as_429_with_retry_after(make_rapport, scripted_upstream):
    rapport = make_rapport()
    scripted_upstream.script(*[Reply(kind="error", status=429, headers={"retry-after": "0"})] * 3)
    with pytest.raises(openai.RateLimitError) as info:
        sdk(rapport).chat.completions.create(model="test-model", messages=MSG)
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert assert_error_shape(info.value.response.json())["code"] == "upstream_rate_limited"


@pytest.mark.parametrize("upstream_path", PATHS)
def test_upstream_400_is_not_retried_and_is_the_clients_error(make_rapport, scripted_upstream, upstream_path):
    rapport = make_rapport(upstream=upstream_path)
    scripted_upstream.script(Reply(kind="error", status=400, body={"error": {"message": "bad thing", "type": "invalid_request_error"}}))
    with pytest.raises(openai.BadRequestError) as info:
        sdk(rapport).chat.completions.create(model="test-model", messages=MSG)
    assert info.value.status_code == 400
    assert_error_shape(info.value.response.json())
    assert len(scripted_upstream.requests) == 1


@pytest.mark.parametrize("upstream_path", PATHS)
def test_hanging_upstream_gives_504_within_the_configured_timeout(make_rapport, scripted_upstream, upstream_path):
    rapport = make_rapport(model_list=models(scripted_upstream, timeout=1.0), upstream=upstream_path)
    scripted_upstream.script(Reply(kind="hang"), Reply(kind="hang"), Reply(kind="hang"))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        sdk(rapport, timeout=30).chat.completions.create(model="test-model", messages=MSG)
    elapsed = time.monotonic() - started
    assert info.value.status_code == 504
    assert assert_error_shape(info.value.response.json())["type"] == "timeout_error"
    # A timeout is not retried (the budget is spent); generous slack for a loaded 2-core machine.
    assert 0.9 <= elapsed < 6.0, elapsed
    assert len(scripted_upstream.requests) == 1


@pytest.mark.parametrize("upstream_path", PATHS)
def test_unreachable_upstream_gives_502(make_rapport, scripted_upstream, upstream_path):
    from tests.support.servers import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    rapport = make_rapport(upstream_url=dead, upstream=upstream_path)
    with pytest.raises(openai.InternalServerError) as info:
        sdk(rapport).chat.completions.create(model="test-model", messages=MSG)
    assert info.value.status_code == 502
    assert_error_shape(info.value.response.json())


@pytest.mark.parametrize("upstream_path", PATHS)
def test_fallback_to_second_model(make_rapport, scripted_upstream, upstream_path):
    rapport = make_rapport(model_list=models(scripted_upstream, fallback=True), upstream=upstream_path)
    scripted_upstream.script(*[Reply(kind="error", status=503)] * 3, Reply(content="from the backup"))
    result = sdk(rapport).chat.completions.create(model="test-model", messages=MSG)
    assert result.choices[0].message.content == "from the backup"
    seen = [r.json["model"] for r in scripted_upstream.requests]
    assert seen == ["scripted"] * 3 + ["backup"]


def test_fallback_for_streams_before_the_first_byte(make_rapport, scripted_upstream):
    rapport = make_rapport(model_list=models(scripted_upstream, fallback=True))
    scripted_upstream.script(*[Reply(kind="error", status=500)] * 3, Reply(content="streamed backup"))
    stream = sdk(rapport).chat.completions.create(model="test-model", messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "streamed backup"
    assert [r.json["model"] for r in scripted_upstream.requests] == ["scripted"] * 3 + ["backup"]


def test_stream_that_fails_before_the_first_byte_gets_a_real_status(make_rapport, scripted_upstream):
    rapport = make_rapport()
    scripted_upstream.script(*[Reply(kind="error", status=500)] * 3)
    with pytest.raises(openai.InternalServerError) as info:
        sdk(rapport).chat.completions.create(model="test-model", messages=MSG, stream=True)
    assert info.value.status_code == 502
    assert len(scripted_upstream.requests) == 3


# -- streams that break ------------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_path", PATHS)
def test_stream_cut_midway_ends_with_error_event_and_sdk_raises(make_rapport, scripted_upstream, upstream_path):
    rapport = make_rapport(upstream=upstream_path)
    scripted_upstream.script(Reply(kind="cut_stream", chunks=["one ", "two ", "three ", "four"], cut_after=2))
    received: list[str] = []
    stream = sdk(rapport, timeout=15).chat.completions.create(model="test-model", messages=MSG, stream=True)
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one two "
    assert info.value.body is not None
    # After the first byte there is no retry: the client already has part of an answer.
    assert len(scripted_upstream.requests) == 1


def _raw_stream_events(rapport) -> list[str]:
    # httpx reads the whole body: a server that dropped the connection mid-chunk would raise here.
    with httpx.Client(timeout=15) as client:
        response = client.post(
            f"{rapport.base_url}/chat/completions",
            headers={"authorization": f"Bearer {rapport.api_key}"},
            json={"model": "test-model", "messages": MSG, "stream": True},
        )
    assert response.status_code == 200
    return [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]


def _ending_error(events: list[str]) -> dict:
    """The error event just before the final [DONE] of a stream that failed midway."""
    assert events[-1] == "[DONE]"
    return assert_error_shape(httpx.Response(200, content=events[-2]).json())


def test_stream_cut_raw_sse_has_error_event_then_done(make_rapport, scripted_upstream):
    rapport = make_rapport()
    scripted_upstream.script(Reply(kind="cut_stream", chunks=["a", "b", "c"], cut_after=1))
    error = _ending_error(_raw_stream_events(rapport))
    assert error["type"] == "upstream_error"


def test_malformed_upstream_event_midstream_ends_with_upstream_error(make_rapport, scripted_upstream):
    rapport = make_rapport()
    odd = {"id": "x", "object": "chat.completion.chunk", "choices": 7}
    scripted_upstream.script(Reply(kind="odd_stream", chunks=["a", "b", "c"], cut_after=1, body=odd))
    error = _ending_error(_raw_stream_events(rapport))
    assert error["type"] == "upstream_error" and "malformed" in error["message"]


def test_unexpected_failure_midstream_still_ends_the_stream_cleanly(make_rapport, scripted_upstream):
    """A failure Rapport did not foresee (here: a delta that is a string) must end the stream with an error
    event and [DONE], never with a dropped connection, and the next request is served normally."""
    rapport = make_rapport()
    odd = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": "oops"}]}
    scripted_upstream.script(Reply(kind="odd_stream", chunks=["a", "b", "c"], cut_after=1, body=odd))
    events = _raw_stream_events(rapport)
    error = _ending_error(events)
    assert error["type"] == "server_error" and "inside Rapport" in error["message"]
    assert httpx.Response(200, content=events[0]).json()["choices"][0]["delta"]["role"] == "assistant"
    scripted_upstream.script(Reply(kind="stream", chunks=["fine"]))
    assert "fine" in "".join(_raw_stream_events(rapport))


def test_client_disconnect_midstream_cancels_the_upstream(make_rapport, scripted_upstream):
    rapport = make_rapport(limits={"max_concurrent_streams": 1})
    # The upstream sends two pieces, then waits (forever, unless cancelled).
    scripted_upstream.script(Reply(kind="slow_stream", chunks=["first ", "second ", "never"], cut_after=2))
    client = sdk(rapport)
    stream = client.chat.completions.create(model="test-model", messages=MSG, stream=True)
    got = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk.choices[0].delta.content)
        if len(got) == 2:
            break
    assert got == ["first ", "second "]
    stream.close()
    assert scripted_upstream.cancelled.wait(timeout=10), "the upstream never saw the cancel"
    # The stream slot is released too: the same key may stream again.
    wait_for(lambda: not rapport.services.limiter.held_streams(), what="stream slot release")
    again = client.chat.completions.create(model="test-model", messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == "echo: hello"


# -- request validation and caps ---------------------------------------------------------------------


def _post(rapport: Any, path: str, *, key: str | None = "api", **kwargs: Any) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key == "api":
        headers["authorization"] = f"Bearer {rapport.api_key}"
    elif key is not None:
        headers["authorization"] = key
    with httpx.Client(timeout=20) as client:
        return client.post(f"{rapport.url}{path}", headers=headers, **kwargs)


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b'{"model": "test-model", "messages": [', "invalid_json"),
        (b"\xff\xfe not utf8", "invalid_json"),
        (b"[1, 2, 3]", "invalid_json"),
        (b"", "invalid_request"),
        (b'"just a string"', "invalid_json"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_malformed_json_is_400(make_rapport, scripted_upstream, content, code, path):
    rapport = make_rapport()
    response = _post(rapport, path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = assert_error_shape(response.json())
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert scripted_upstream.requests == []


def test_body_over_the_limit_is_413(make_rapport, scripted_upstream):
    rapport = make_rapport(limits={"max_body_bytes": 2048})
    big = [{"role": "user", "content": "x" * 4096}]
    with pytest.raises(openai.APIStatusError) as info:
        sdk(rapport).chat.completions.create(model="test-model", messages=big)
    assert info.value.status_code == 413
    assert assert_error_shape(info.value.response.json())["code"] == "request_too_large"
    # Without Content-Length (chunked upload) the cap holds as the bytes arrive.
    chunks = (b'{"model": "test-model", "messages": [{"role": "user", "content": "' + b"y" * 1024 for _ in range(4))
    response = _post(rapport, "/v1/chat/completions", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert_error_shape(response.json())
    assert scripted_upstream.requests == []


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": MSG * 9}, "messages"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"max_completion_tokens": 101}, "max_completion_tokens"),
        ({"n": 3}, "n"),
    ],
)
def test_consumption_caps_are_400_naming_the_param(make_rapport, scripted_upstream, kwargs, param):
    rapport = make_rapport(limits={"max_messages": 8, "max_tokens": 100, "max_n": 2})
    request = {"model": "test-model", "messages": MSG, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        sdk(rapport).chat.completions.create(**request)
    assert assert_error_shape(info.value.response.json())["param"] == param
    assert scripted_upstream.requests == []


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "test-model", "prompt": "x", "max_tokens": 101}, "max_tokens"),
        ("/v1/completions", {"model": "test-model", "prompt": "x", "n": 3}, "n"),
    ],
)
def test_caps_on_legacy_completions(make_rapport, scripted_upstream, path, body, param):
    rapport = make_rapport(limits={"max_tokens": 100, "max_n": 2})
    response = _post(rapport, path, json=body)
    assert response.status_code == 400
    assert assert_error_shape(response.json())["param"] == param


def test_undeclared_cap_field_on_legacy_completions_passes_through(make_rapport, scripted_upstream):
    # Found by the fuzz test: a pass-through field named like a chat cap (here a list) was compared with the
    # cap and crashed the handler (500). Legacy completions have no such field; it goes to the upstream as is.
    rapport = make_rapport(limits={"max_tokens": 100})
    body = {"model": "test-model", "prompt": "x", "max_completion_tokens": [1]}
    assert _post(rapport, "/v1/completions", json=body).status_code == 200
    assert scripted_upstream.requests[-1].json["max_completion_tokens"] == [1]


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "custom_llm_provider", "extra_headers", "mock_response"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_client_cannot_redirect_the_upstream(make_rapport, scripted_upstream, field, path):
    rapport = make_rapport()
    body: dict[str, Any] = {"model": "test-model", "messages": MSG, "prompt": "x", "input": "x", field: "http://169.254.169.254/latest"}
    response = _post(rapport, path, json=body)
    assert response.status_code == 400
    error = assert_error_shape(response.json())
    assert error["param"] == field and error["code"] == "forbidden_parameter"
    assert scripted_upstream.requests == []


# -- rate limits ------------------------------------------------------------------------------------


def test_per_key_rate_limit_is_429_with_retry_after(make_rapport, scripted_upstream):
    rapport = make_rapport(limits={"rate_limit_rps": 0.2, "rate_limit_burst": 2})
    client = sdk(rapport)
    for _ in range(2):
        client.chat.completions.create(model="test-model", messages=MSG)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="test-model", messages=MSG)
    assert info.value.status_code == 429
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 5
    assert assert_error_shape(info.value.response.json())["type"] == "rate_limit_error"
    assert len(scripted_upstream.requests) == 2
    # The bucket is per key: tenant B's key is untouched by tenant A's burst.
    other = sdk(rapport, key=rapport.api_key_b).chat.completions.create(model="test-model", messages=MSG)
    assert other.choices[0].message.content == "echo: hello"


def test_rate_limit_covers_every_openai_endpoint(make_rapport, scripted_upstream):
    rapport = make_rapport(limits={"rate_limit_rps": 0.1, "rate_limit_burst": 1})
    assert _post(rapport, "/v1/completions", json={"model": "test-model", "prompt": "x"}).status_code == 200
    for path, body in [
        ("/v1/completions", {"model": "test-model", "prompt": "x"}),
        ("/v1/embeddings", {"model": "test-model", "input": "x"}),
        ("/v1/chat/completions", {"model": "test-model", "messages": MSG}),
    ]:
        response = _post(rapport, path, json=body)
        assert response.status_code == 429, path
        assert int(response.headers["retry-after"]) >= 1
        assert_error_shape(response.json())


def test_concurrent_stream_cap_is_429(make_rapport, scripted_upstream):
    rapport = make_rapport(limits={"max_concurrent_streams": 1})
    scripted_upstream.script(Reply(kind="slow_stream", chunks=["held ", "open ", "x"], cut_after=2))
    client = sdk(rapport)
    held = client.chat.completions.create(model="test-model", messages=MSG, stream=True)
    first = next(iter(held))
    assert first.choices
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="test-model", messages=MSG, stream=True)
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert assert_error_shape(info.value.response.json())["code"] == "concurrent_streams_exceeded"
    # Non-streaming calls and other keys are not counted against the cap.
    assert client.chat.completions.create(model="test-model", messages=MSG).choices
    other = sdk(rapport, key=rapport.api_key_b).chat.completions.create(model="test-model", messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in other if c.choices) == "echo: hello"
    held.close()
    wait_for(lambda: not rapport.services.limiter.held_streams(), what="stream slot release")


# -- authentication -------------------------------------------------------------------------------------

OPENAI_ROUTES = [
    ("POST", "/v1/chat/completions", {"model": "test-model", "messages": MSG}),
    ("POST", "/v1/completions", {"model": "test-model", "prompt": "x"}),
    ("POST", "/v1/embeddings", {"model": "test-model", "input": "x"}),
    ("GET", "/v1/models", None),
]


@pytest.mark.parametrize(("method", "path", "body"), OPENAI_ROUTES)
@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer rk-wrong", 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer", 401),
        ("Bearer rk-wrong extra", 401),
        ("api", 200),
        ("admin", 200),
    ],
)
def test_auth_matrix_on_openai_routes(make_rapport, scripted_upstream, method, path, body, authorization, status):
    rapport = make_rapport()
    headers = {}
    if authorization == "api":
        headers["authorization"] = f"Bearer {rapport.api_key}"
    elif authorization == "admin":
        headers["authorization"] = f"Bearer {rapport.admin_key}"
    elif authorization is not None:
        headers["authorization"] = authorization
    with httpx.Client(timeout=20) as client:
        response = client.request(method, f"{rapport.url}{path}", headers=headers, json=body)
    assert response.status_code == status, response.text
    if status != 200:
        error = assert_error_shape(response.json())
        assert error["type"] == "authentication_error"
        assert scripted_upstream.requests == []


def test_sdk_auth_errors_are_the_sdk_classes(make_rapport):
    rapport = make_rapport()
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(rapport, key="rk-wrong").models.list()
    assert_error_shape(info.value.response.json())


def test_revoked_key_is_refused(make_rapport, scripted_upstream):
    rapport = make_rapport()
    plain, key = rapport.services.keys.create("temp", tenant="tenant-c")
    assert sdk(rapport, key=plain).chat.completions.create(model="test-model", messages=MSG).choices
    assert rapport.services.keys.revoke(key.key_id)
    with pytest.raises(openai.AuthenticationError):
        sdk(rapport, key=plain).chat.completions.create(model="test-model", messages=MSG)


# -- unknown routes, methods, models --------------------------------------------------------------------


def test_unknown_route_and_method_are_openai_errors(make_rapport):
    rapport = make_rapport()
    with httpx.Client(timeout=10) as client:
        missing = client.get(f"{rapport.url}/v1/nothing-here", headers={"authorization": f"Bearer {rapport.api_key}"})
        wrong_method = client.get(f"{rapport.url}/v1/chat/completions", headers={"authorization": f"Bearer {rapport.api_key}"})
    assert missing.status_code == 404
    assert assert_error_shape(missing.json())["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert_error_shape(wrong_method.json())


def test_unknown_model_is_404_on_every_endpoint(make_rapport, scripted_upstream):
    rapport = make_rapport()
    for path, body in [
        ("/v1/chat/completions", {"model": "nope", "messages": MSG}),
        ("/v1/completions", {"model": "nope", "prompt": "x"}),
        ("/v1/embeddings", {"model": "nope", "input": "x"}),
    ]:
        response = _post(rapport, path, json=body)
        assert response.status_code == 404, path
        error = assert_error_shape(response.json())
        assert error["code"] == "model_not_found" and error["param"] == "model"
    assert scripted_upstream.requests == []


# -- health, readiness, metrics ----------------------------------------------------------------------------


def test_healthz_readyz_and_readyz_down(make_rapport, scripted_upstream):
    from tests.support.servers import free_port

    rapport = make_rapport()
    with httpx.Client(timeout=20) as client:
        assert client.get(f"{rapport.url}/healthz").json() == {"status": "ok"}
        ready = client.get(f"{rapport.url}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["upstream:test-model"]["ok"] is True
        down = make_rapport(upstream_url=f"http://127.0.0.1:{free_port()}/v1")
        not_ready = client.get(f"{down.url}/readyz")
        assert not_ready.status_code == 503
        body = not_ready.json()
        assert body["status"] == "not ready"
        assert body["checks"]["upstream:test-model"]["ok"] is False
        # Liveness does not depend on the upstream.
        assert client.get(f"{down.url}/healthz").status_code == 200


def test_metrics_count_requests_errors_latency_and_tokens(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = sdk(rapport)
    client.chat.completions.create(model="test-model", messages=MSG)
    scripted_upstream.script(*[Reply(kind="error", status=500)] * 3)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="test-model", messages=MSG)
    with httpx.Client(timeout=10) as http:
        response = http.get(f"{rapport.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'rapport_requests_total{endpoint="chat",status="200"} 1.0' in text
    assert 'rapport_requests_total{endpoint="chat",status="502"} 1.0' in text
    assert 'rapport_errors_total{endpoint="chat",type="502"} 1.0' in text
    assert 'rapport_request_seconds_count{endpoint="chat"} 2.0' in text
    assert 'rapport_upstream_seconds_count{model="test-model"} 1.0' in text
    assert 'rapport_tokens_total{kind="prompt",model="test-model"} 10.0' in text
    assert 'rapport_tokens_total{kind="completion",model="test-model"} 5.0' in text


def _block_the_loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_stalled_event_loop_shows_in_metrics_and_its_stack_in_the_log(make_rapport, caplog):
    from bench.soak import loop_lag

    rapport = make_rapport(server={"loop_stall_log_s": 0.3})

    def worst_lag() -> float:
        return loop_lag(rapport.url)["max_s"]

    assert worst_lag() < 0.9
    # A blocking call on the server's loop, the kind of stall the metric and the log exist to reveal.
    assert rapport.server.loop is not None
    with caplog.at_level(logging.WARNING, logger="rapport.loop"):
        rapport.server.loop.call_soon_threadsafe(_block_the_loop, 1.0)
        deadline = time.monotonic() + 10
        while worst_lag() < 0.9 and time.monotonic() < deadline:
            pass
    assert worst_lag() >= 0.9
    stalls = [r.getMessage() for r in caplog.records if r.name == "rapport.loop"]
    assert len(stalls) == 1, stalls
    assert "event loop blocked" in stalls[0] and "_block_the_loop" in stalls[0]
