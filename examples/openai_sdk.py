"""Rapport with the official OpenAI SDK: only `base_url` changes, and the end user is named.

Chat, a stream, and the Responses API (create, stream, continue with `previous_response_id`), all as "alice".
Start Rapport first (`bash scripts/serve.sh`), then:
    RAPPORT_BASE_URL=http://127.0.0.1:8080/v1 RAPPORT_API_KEY=... python examples/openai_sdk.py
(in open local mode any key works; RAPPORT_MODEL picks the model, default smollm2).
"""

from __future__ import annotations

import os

import openai

BASE_URL = os.environ.get("RAPPORT_BASE_URL", "http://127.0.0.1:8080/v1")
API_KEY = os.environ.get("RAPPORT_API_KEY", "sk-local")
MODEL = os.environ.get("RAPPORT_MODEL", "smollm2")
USER = os.environ.get("RAPPORT_USER", "alice")


def main() -> None:
    # The header names the end user on every request; `user=` in a request body works as well.
    client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, default_headers={"X-Rapport-User": USER})

    # 1. Chat. Memory stores the exchange off the request path, for later conversations of this user.
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "I'm vegetarian and I love spicy food."}], max_tokens=60
    )
    print("chat:", first.choices[0].message.content)

    # 2. A stream; `rapport` options travel in extra_body (here: memory off for this one call).
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello in French."}],
        max_tokens=20,
        stream=True,
        extra_body={"rapport": {"memory": False}},
    )
    print("stream:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    # 3. The Responses API: Rapport keeps the conversation, so a follow-up sends only the new input.
    answer = client.responses.create(model=MODEL, instructions="Answer briefly.", input="My name is Ada.")
    print("response:", answer.id, answer.output_text)
    follow = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=answer.id)
    print("follow-up:", follow.output_text)

    # 4. A streamed response: typed events, the text arrives as output_text deltas.
    pieces: list[str] = []
    with client.responses.stream(model=MODEL, input="Name a colour.", previous_response_id=follow.id) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                pieces.append(event.delta)
        final = events.get_final_response()
    print("streamed response:", "".join(pieces), "| id:", final.id)


if __name__ == "__main__":
    main()
