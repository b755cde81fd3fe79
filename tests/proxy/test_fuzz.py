"""Fuzzing Rapport's own OpenAPI spec (issue 2): no input, valid or not, gives a 5xx or a traceback.

schemathesis reads `/openapi.json` from a real Rapport server (in front of the healthy scripted upstream, so
any 5xx is Rapport's own fault) and generates both schema-conforming and schema-violating requests for every
operation; every error must be the OpenAI error object. Bounded by `max_examples` to stay well under two
minutes on two cores.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Err, Ok

from proxy.app import create_app
from tests.conftest import ADMIN_KEY, API_KEY, rapport_settings
from tests.support.servers import ThreadedServer
from tests.support.upstream import ScriptedUpstream

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def fuzz_server(_scripted_session: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Small caps so that the fuzzer actually reaches the limits (413 and friends) with generated data.
    settings_ = rapport_settings(
        tmp_path_factory.mktemp("fuzz"),
        _scripted_session.base_url,
        limits={"max_body_bytes": 64 * 1024, "max_messages": 64, "max_tokens": 4096, "max_n": 4},
        upstream={"retries": 0},
    )
    server = ThreadedServer(create_app(settings_)).start()
    try:
        yield server.url
    finally:
        server.stop()


def load_schema(url: str) -> Any:
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def check_response(response: Any) -> None:
    status = response.status_code
    assert status < 500, f"server error {status}: {response.text[:500]}"
    text = response.text
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    if status >= 400:
        payload = orjson.loads(response.content)
        assert set(payload) == {"error"}, payload
        assert set(payload["error"]) == {"message", "type", "param", "code"}, payload
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]


def test_openapi_spec_is_complete(fuzz_server: str) -> None:
    """Every operation of the published spec resolves (no dangling $ref), so clients and fuzzers can use it."""
    results = list(load_schema(fuzz_server).get_all_operations())
    problems = [str(r.err()) for r in results if isinstance(r, Err)]
    assert not problems, problems
    bodies = {r.ok().label: len(r.ok().body) for r in results if isinstance(r, Ok)}
    for label in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings"):
        assert bodies.get(label) == 1, f"{label} has no usable request body in the spec"
    spec = httpx.get(f"{fuzz_server}/openapi.json").json()
    refs = set(re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', orjson.dumps(spec).decode()))
    missing = refs - set(spec.get("components", {}).get("schemas", {}))
    assert not missing, f"dangling $ref in /openapi.json: {sorted(missing)}"


# schemathesis' lazy pytest loader (`from_fixture`) does not run under pytest 9, so each operation's
# hypothesis strategy is driven directly: the same generators, without the pytest plugin.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_openapi_operations_never_fail_on_the_server(fuzz_server: str, mode: GenerationMode) -> None:
    schema = load_schema(fuzz_server)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    if mode is GenerationMode.NEGATIVE:
        # An operation without a body or parameters has no invalid input to generate.
        operations = [op for op in operations if len(op.body) or len(op.query) or len(op.headers)]
    assert operations
    statuses: dict[str, Counter[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            response = case.call(base_url=fuzz_server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
            statuses.setdefault(case.operation.label, Counter())[response.status_code] += 1
            check_response(response)

        run()
    print(mode.value, {label: dict(counts) for label, counts in statuses.items()})
    assert set(statuses) == {op.label for op in operations}, statuses
    chat = statuses["POST /v1/chat/completions"]
    if mode is GenerationMode.POSITIVE:
        # Valid requests really went through to the upstream, not just bounced off validation.
        assert chat[200] > 0, chat
    else:
        assert sum(n for status, n in chat.items() if 400 <= status < 500) > 0, chat


# -- hand-written strategies for what the spec cannot express -------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_json_scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | _text
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "model", "messages", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "stop",
        "seed", "user", "safety_identifier", "metadata", "rapport", "prompt", "input",
    ]
)  # fmt: skip
_bodies = st.dictionaries(_fields, _json, max_size=8).map(
    lambda d: {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], **d}
)
_raw = st.binary(max_size=256) | _json.map(lambda v: json.dumps(v).encode())
# What an HTTP client will put on the wire in a header value (no control characters).
_header_values = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=300)


@given(body=_bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]))
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_arbitrary_json_fields_never_fail_on_the_server(fuzz_server: str, body: dict[str, Any], path: str) -> None:
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{fuzz_server}{path}", headers={"authorization": f"Bearer {API_KEY}"}, json=body)
    check_response(response)


@given(raw=_raw, path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_arbitrary_bytes_never_fail_on_the_server(fuzz_server: str, raw: bytes, path: str) -> None:
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{fuzz_server}{path}",
            headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
            content=raw,
        )
    check_response(response)


@given(
    auth=_header_values,
    user=_header_values,
    path=st.sampled_from(["/v1/chat/completions", "/v1/models", "/admin/does-not-matter"]),
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_arbitrary_auth_and_user_headers_never_fail_on_the_server(
    fuzz_server: str, auth: str, user: str, path: str
) -> None:
    headers = {"authorization": auth.strip(), "x-rapport-user": user.strip()}
    body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as client:
        response = client.request(
            "GET" if path != "/v1/chat/completions" else "POST", f"{fuzz_server}{path}", headers=headers, json=body
        )
    check_response(response)
    if auth.strip() not in (f"Bearer {API_KEY}", f"Bearer {ADMIN_KEY}"):
        assert response.status_code in (401, 404), response.text
