"""VAS through Rapport: options, per-user weights (admin API), streaming, reporting, and a down backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.support.servers import free_port
from tests.vas.conftest import Trained

# Session fixtures sample and train on 2 shared cores: their set-up can take many minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def _settings(smollm2_url: str, trained: Trained, extra_models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "smollm2", "litellm_params": {"model": "openai/smollm2", "api_base": smollm2_url,
                                                         "api_key": "sk-local", "timeout": 60}}
        ],
        "vas": {
            "value_models": [{"name": "sentiment", "path": str(trained.model_dir)}, *(extra_models or [])],
            "beta": 2.0,
            "max_tokens": 64,
        },
    }


@pytest.fixture()
def rapport(make_rapport: Callable[..., Any], smollm2_url: str, trained: Trained) -> Any:
    return make_rapport(upstream_url=smollm2_url, **_settings(smollm2_url, trained))


def _client(handle: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=handle.base_url, api_key=handle.api_key, max_retries=0, timeout=120)


def _vas_report(data: dict[str, Any]) -> dict[str, Any]:
    stage = next(s for s in data["rapport"]["stages"] if s["name"] == "vas")
    assert stage["ran"]
    detail: dict[str, Any] = stage["detail"]
    return detail


def test_vas_answer_reports_steps_calls_and_time(rapport: Any) -> None:
    raw = _client(rapport).chat.completions.with_raw_response.create(
        model="smollm2", user="alice", max_tokens=6,
        messages=[{"role": "user", "content": "Describe your morning in one sentence."}],
        extra_body={"rapport": {"vas": {"beta": 2.0, "top_k": 5, "seed": 3}}},
    )
    data = raw.http_response.json()
    assert data["choices"][0]["message"]["content"]
    detail = _vas_report(data)
    assert detail["applied"] is True and detail["mode"] == "token" and detail["beta"] == 2.0
    assert detail["weights"] == {"sentiment": 1.0} and detail["weights_from"] == "all"
    assert 1 <= detail["steps"] <= 6 and detail["upstream_calls"] == detail["steps"]
    assert detail["value_calls"] >= 1 and detail["ms"] > 0


def test_block_mode_and_best_of_n(rapport: Any) -> None:
    client = _client(rapport)
    for mode, calls in (("block", 2 * 2), ("best_of_n", 3)):
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", user="alice", max_tokens=8,
            messages=[{"role": "user", "content": "Say something about cats."}],
            extra_body={"rapport": {"vas": {"mode": mode, "block_tokens": 4, "block_candidates": 2, "best_of": 3,
                                            "seed": 1}}},
        )
        detail = _vas_report(raw.http_response.json())
        assert detail["mode"] == mode
        assert detail["upstream_calls"] <= calls and detail["upstream_calls"] >= 2


def test_streaming_sends_tokens_as_chosen(rapport: Any) -> None:
    stream = _client(rapport).chat.completions.create(
        model="smollm2", user="alice", max_tokens=6, stream=True,
        messages=[{"role": "user", "content": "Name a color."}],
        extra_body={"rapport": {"vas": {"beta": 1.0, "top_k": 5, "seed": 2}}},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces and chunks[-1].choices[0].finish_reason in {"stop", "length"}
    final = chunks[-1].model_extra or {}
    assert final["rapport"]["vas"]["steps"] >= len(pieces)


@pytest.mark.parametrize(
    ("vas", "param"),
    [({"beta": -1}, "rapport.vas.beta"), ({"weights": {"nope": 1.0}}, "rapport.vas.weights"),
     ({"top_k": 0}, "rapport.vas.top_k"), ({"bogus": 1}, "rapport.vas.bogus")],
)
def test_bad_options_are_400_with_param(rapport: Any, vas: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _client(rapport).chat.completions.create(
            model="smollm2", user="alice", max_tokens=2, messages=[{"role": "user", "content": "hi"}],
            extra_body={"rapport": {"vas": vas}},
        )
    assert err.value.body["param"] == param  # type: ignore[index]


def test_user_weights_via_admin_api_are_scoped_by_tenant(rapport: Any) -> None:
    admin = httpx.Client(base_url=rapport.url, headers={"Authorization": f"Bearer {rapport.admin_key}"}, timeout=30)
    put = admin.put("/admin/vas/users/bob", params={"tenant": "tenant-a"},
                    json={"weights": {"sentiment": 0.5}, "beta": 3.0})
    assert put.status_code == 200, put.text
    assert admin.get("/admin/vas/users/bob", params={"tenant": "tenant-a"}).json()["weights"] == {"sentiment": 0.5}
    assert admin.get("/admin/vas/users/bob", params={"tenant": "tenant-b"}).status_code == 404
    bad = admin.put("/admin/vas/users/bob", params={"tenant": "tenant-a"}, json={"weights": {"x": 1.0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "weights"
    user_key = httpx.get(f"{rapport.url}/admin/vas/users/bob", headers={"Authorization": f"Bearer {rapport.api_key}"})
    assert user_key.status_code in {401, 403}

    raw = _client(rapport).chat.completions.with_raw_response.create(
        model="smollm2", user="bob", max_tokens=3, messages=[{"role": "user", "content": "Hi"}],
        extra_body={"rapport": {"vas": True}},
    )
    detail = _vas_report(raw.http_response.json())
    assert detail["weights"] == {"sentiment": 0.5} and detail["weights_from"] == "profile" and detail["beta"] == 3.0
    assert admin.delete("/admin/vas/users/bob", params={"tenant": "tenant-a"}).json()["deleted"] is True
    models = admin.get("/admin/vas/value-models").json()["data"]
    assert models[0] == {"name": "sentiment", "backend": "torch", "loaded": True, "error": None}


def test_value_backend_down_turns_vas_off_and_says_so(
    make_rapport: Callable[..., Any], smollm2_url: str, trained: Trained
) -> None:
    dead = {"name": "remote", "backend": "vllm", "url": f"http://127.0.0.1:{free_port()}", "served_name": "value"}
    handle = make_rapport(upstream_url=smollm2_url, **_settings(smollm2_url, trained, [dead]))
    raw = _client(handle).chat.completions.with_raw_response.create(
        model="smollm2", user="carol", max_tokens=4, messages=[{"role": "user", "content": "Hi"}],
        extra_body={"rapport": {"vas": {"weights": {"remote": 1.0}}}},
    )
    assert raw.http_response.status_code == 200
    data = raw.http_response.json()
    assert data["choices"][0]["message"]["content"] is not None
    detail = _vas_report(data)
    assert detail["applied"] is False and "down" in detail["reason"]
    assert "vas" in raw.http_response.headers.get("x-rapport-degraded", "")
