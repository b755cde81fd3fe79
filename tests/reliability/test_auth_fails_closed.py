"""Auth fails closed (issue 12, point 7): open mode is decided at start, a key-store failure is a 503."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx

from proxy.auth.keys import KeyStore
from proxy.settings import AuthSettings

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def test_revoking_every_key_while_serving_does_not_open_the_server(tmp_path: Path, make_rapport: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = KeyStore(data / "keys.sqlite3", AuthSettings())
    plain, key = store.create("only", tenant="acme", user="alice")
    store.close()
    # No admin key and no config keys: only the stored key, so the server starts closed.
    rapport = make_rapport(data_dir=data, auth={"admin_key": None, "static_keys": []})
    with httpx.Client(base_url=rapport.base_url, timeout=30) as client:
        assert client.post("/chat/completions", json=CHAT).status_code == 401
        assert client.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {plain}"}).status_code == 200
        assert rapport.services.keys.revoke(key.key_id)
        # Before: with no key left, every request was accepted unauthenticated, as the open tenant.
        for headers in ({}, {"authorization": f"Bearer {plain}"}, {"authorization": "Bearer sk-anything"}):
            response = client.post("/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 401, response.text
        assert client.get(f"{rapport.url}/admin/users", params={"tenant": "acme"}).status_code in (401, 403)


def test_open_mode_ends_when_a_key_is_created(tmp_path: Path, make_rapport: Any) -> None:
    rapport = make_rapport(auth={"admin_key": None, "static_keys": []})
    with httpx.Client(base_url=rapport.base_url, timeout=30) as client:
        assert client.post("/chat/completions", json=CHAT).status_code == 200  # open: local development
        plain, _ = rapport.services.keys.create("first", tenant="acme")
        assert client.post("/chat/completions", json=CHAT).status_code == 401
        assert client.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {plain}"}).status_code == 200


def test_a_key_store_failure_answers_503_never_a_pass(make_rapport: Any, monkeypatch: Any) -> None:
    rapport = make_rapport()
    keys = rapport.services.keys

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(keys, "lookup", broken)
    monkeypatch.setattr(keys, "any_proxy_keys", broken)
    with httpx.Client(base_url=rapport.base_url, timeout=30) as client:
        for headers in ({"authorization": "Bearer rk-unknown"}, {"authorization": f"Bearer {rapport.api_key}"}):
            response = client.post("/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "service_unavailable"
        # The admin key is checked against its hash in memory, so the admin API still answers.
        admin = client.get(f"{rapport.url}/admin/users", headers={"authorization": f"Bearer {rapport.admin_key}"})
        assert admin.status_code == 200
