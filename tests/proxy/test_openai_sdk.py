"""The official openai package, sync and async, against Rapport over a real socket (scripted upstream)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.upstream import Reply, completion


def test_chat_non_stream_passes_body_through(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    result = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "hello there"}],
        temperature=0.3,
        seed=7,
        stop=["\n\n"],
        max_completion_tokens=20,
        extra_body={"custom_field": {"nested": True}},
    )
    assert result.choices[0].message.content == "echo: hello there"
    sent = scripted_upstream.requests[-1].json
    assert sent["model"] == "scripted"
    assert sent["temperature"] == 0.3 and sent["seed"] == 7 and sent["stop"] == ["\n\n"]
    assert sent["max_completion_tokens"] == 20
    assert sent["custom_field"] == {"nested": True}, "unknown fields must reach the upstream untouched"
    assert "rapport" not in sent


def test_user_reaches_upstream_and_response_reports_stages(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key, default_headers={"X-Rapport-User": "alice"})
    raw = client.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], extra_body={"rapport": {"memory": False}}
    )
    result = raw.parse()
    assert scripted_upstream.requests[-1].json["user"] == "alice"
    assert result.model_extra["rapport"]["user"] == "alice"
    assert raw.headers["x-rapport-request-id"].startswith("rq-")
    assert "x-rapport-stages" in raw.headers


def test_stream_with_usage_and_done(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    stream = client.chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me please"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_tools_and_json_schema_pass_through(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    scripted_upstream.script(Reply(body=completion("", "scripted", tool_calls=[call])))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    result = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "weather?"}], tools=tools, tool_choice="auto", parallel_tool_calls=True
    )
    assert result.choices[0].message.tool_calls[0].function.name == "get_weather"
    sent = scripted_upstream.requests[-1].json
    assert sent["tools"] == tools and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True

    schema = {"name": "answer", "schema": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}
    scripted_upstream.script(Reply(content=json.dumps({"x": 3})))
    result = client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "json"}], response_format={"type": "json_schema", "json_schema": schema}
    )
    assert json.loads(result.choices[0].message.content) == {"x": 3}
    assert scripted_upstream.requests[-1].json["response_format"]["json_schema"] == schema


def test_multimodal_parts_pass_through(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    parts = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": parts}])
    assert scripted_upstream.requests[-1].json["messages"][0]["content"] == parts


@pytest.mark.parametrize(
    ("kwargs", "status", "exc", "param"),
    [
        ({"model": "nope"}, 404, openai.NotFoundError, "model"),
        ({"temperature": 5}, 400, openai.BadRequestError, "temperature"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, openai.BadRequestError, "messages[0].role"),
        ({"messages": []}, 400, openai.BadRequestError, "messages"),
        ({"extra_body": {"api_base": "http://evil.example"}}, 400, openai.BadRequestError, "api_base"),
    ],
)
def test_errors_surface_as_sdk_exceptions(make_rapport, kwargs, status, exc, param):
    rapport = make_rapport()
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key, max_retries=0)
    request = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], **kwargs}
    with pytest.raises(exc) as info:
        client.chat.completions.create(**request)
    assert info.value.status_code == status
    assert info.value.body["param"] == param
    assert info.value.body["type"] in {"invalid_request_error"}


def test_auth_errors(make_rapport):
    rapport = make_rapport()
    bad = openai.OpenAI(base_url=rapport.base_url, api_key="rk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401


async def test_async_client_chat_and_stream(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = openai.AsyncOpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    result = await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "async hi"}])
    assert result.choices[0].message.content == "echo: async hi"
    stream = await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "async stream"}], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: async stream"
    models = await client.models.list()
    assert [m.id for m in models.data] == ["test-model"]
    await client.close()


def test_completions_and_embeddings(make_rapport, scripted_upstream):
    rapport = make_rapport()
    client = openai.OpenAI(base_url=rapport.base_url, api_key=rapport.api_key)
    result = client.completions.create(model="test-model", prompt="Once", max_tokens=5)
    assert result.choices[0].text == "completed: Once"
    emb = client.embeddings.create(model="test-model", input=["a", "bb"])
    assert len(emb.data) == 2
