"""Rapport with the official OpenAI SDK: only `base_url` changes, and the end user is named.

Run `bash scripts/serve.sh` first, then: `.venv/bin/python examples/openai_sdk.py`.
"""

from __future__ import annotations

import os

import openai

BASE_URL = os.environ.get("RAPPORT_BASE_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("RAPPORT_API_KEY", "sk-local")  # any value in open mode


def main() -> None:
    client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, default_headers={"X-Rapport-User": "alice"})
    first = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "I'm vegetarian and I love spicy food."}],
        max_tokens=60,
    )
    print("assistant:", first.choices[0].message.content)

    # A new conversation: memory retrieves what alice said before and adds it to the upstream prompt.
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What should I cook tonight?"}],
        max_tokens=80,
        extra_body={"rapport": {"memory": {"k": 3}}},
    )
    second = raw.parse()
    print("assistant:", second.choices[0].message.content)
    print("stages:", raw.headers.get("x-rapport-stages"), "| timing:", raw.headers.get("server-timing"))

    # Streaming works the same way; memory off for this one call.
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello in French."}],
        max_tokens=20,
        stream=True,
        extra_body={"rapport": {"memory": False}},
    )
    print("streamed:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))


if __name__ == "__main__":
    main()
