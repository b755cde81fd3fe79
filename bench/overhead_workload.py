"""What the overhead bench sends: request bodies per row, and the users it seeds for the stage rows.

Memory users get `items_per_user` stored user messages (PrefEval's inter-turn user messages when the data is
present, with their conversation ids; generated sentences otherwise), imported through the admin API, so each
request runs dense + lexical retrieval, neighbours and composition over a realistic store. RPM users get a
labelled rating history (input, the user's own rating) constructed by the cheap extractor. Every measured
request carries a new user text, so no request is served from the query-embedding cache.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

SYSTEM = "You are a concise assistant."
HELLO = "Say hello to the benchmark in one short sentence, please."
CUISINES = [
    "vegan",
    "seafood",
    "Thai",
    "Italian",
    "Mexican",
    "Ethiopian",
    "ramen",
    "steak",
    "Indian",
    "Greek",
]
PRICES = ["cheap", "mid-priced", "expensive"]
PLACES = [
    "Green Leaf",
    "Pearl",
    "Harbor Shack",
    "Basil",
    "Casa Sol",
    "Blue Door",
    "Koto",
    "Olive Tree",
    "Ember",
]


def memory_texts(count: int, offset: int) -> list[tuple[str, str]]:
    """(text, conversation id) for one user's stored messages."""
    try:
        from bench._common import DATA

        convs = json.loads((DATA / "filtered_inter_turns.json").read_text())
        pool = [
            (m["content"], f"conv-{i}")
            for i, c in enumerate(convs)
            for m in c["conversation"]
            if m["role"] == "user" and m["content"].strip()
        ]
    except (OSError, ValueError, KeyError):
        pool = []
    if not pool:
        rng = random.Random(7)
        pool = [
            (
                f"I had {rng.choice(CUISINES)} food at {rng.choice(PLACES)} and it was {rng.choice(PRICES)}; "
                f"note {i}: I prefer {rng.choice(CUISINES)} on weekdays.",
                f"conv-{i // 12}",
            )
            for i in range(400)
        ]
    return [pool[(offset + i) % len(pool)] for i in range(count)]


def memory_questions() -> list[str]:
    try:
        from bench._common import explicit_preferences

        questions = [str(r["question"]) for r in explicit_preferences() if r.get("question")]
    except (OSError, ValueError, KeyError):
        questions = []
    return questions or [f"Can you recommend a {c} place for dinner tonight?" for c in CUISINES]


def rpm_history(user_index: int, count: int) -> list[dict[str, str]]:
    """A user's labelled ratings: this user likes two cuisines and cheap places (their own responses)."""
    rng = random.Random(100 + user_index)
    liked = {CUISINES[user_index % len(CUISINES)], CUISINES[(user_index + 3) % len(CUISINES)]}
    out = []
    for i in range(count):
        cuisine, price, place = rng.choice(CUISINES), rng.choice(PRICES), rng.choice(PLACES)
        rating = (
            2
            + (2 if cuisine in liked else 0)
            + (1 if price == "cheap" else 0)
            - (1 if price == "expensive" else 0)
        )
        text = f"Rate: {place} {i}, a {cuisine} restaurant, {price}."
        out.append({"input": text, "response": str(max(1, min(5, rating))), "task": "rating"})
    return out


def chat_body(
    model: str, text: str, stream: bool, user: str | None = None, rapport: dict[str, Any] | None = None
) -> str:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        "max_tokens": 32,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if user is not None:
        body["user"] = user
    if rapport is not None:
        body["rapport"] = rapport
    return json.dumps(body)


def responses_body(model: str, text: str, stream: bool) -> str:
    body: dict[str, Any] = {
        "model": model,
        "instructions": SYSTEM,
        "input": text,
        "max_output_tokens": 32,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body)


# Stage options per row. `record: false`: the measured exchanges are not stored, so the store stays the
# seeded size through the run and no summary or learning job competes with the measurement.
MEMORY_OPTIONS = {"memory": True, "rpm": False, "vas": False, "record": False}
RPM_OPTIONS = {
    "memory": False,
    "rpm": {"mode": "cheap", "return_reasoning": False},
    "vas": False,
    "record": False,
}


def bodies(
    kind: str, endpoint: str, model: str, stream: bool, count: int, users: int, salt: str
) -> list[str]:
    """`count` request bodies for one series; `salt` keeps texts unique across series and rounds."""
    if endpoint == "responses":
        return [responses_body(model, HELLO, stream)]
    if kind == "plain":
        return [chat_body(model, HELLO, stream)]
    out = []
    questions = memory_questions()
    rng = random.Random(salt)
    for i in range(count):
        if kind == "memory":
            text = f"{questions[i % len(questions)]} (request {salt}-{i})"
            out.append(chat_body(model, text, stream, f"mem-user-{i % users}", MEMORY_OPTIONS))
        else:
            text = f"Rate: {rng.choice(PLACES)} {salt}-{i}, a {rng.choice(CUISINES)} restaurant, {rng.choice(PRICES)}."
            out.append(chat_body(model, text, stream, f"rpm-user-{i % users}", RPM_OPTIONS))
    return out


def seed(
    root_url: str, admin_key: str, memory_users: int, items_per_user: int, rpm_users: int, history: int
) -> dict[str, Any]:
    """Seed the stage rows' users through the admin API and wait for their background jobs; returns counts."""
    import httpx

    headers = {"authorization": f"Bearer {admin_key}"}
    started = time.monotonic()
    with httpx.Client(base_url=root_url, headers=headers, timeout=600) as client:
        for u in range(memory_users):
            now = time.time()
            items = [
                {
                    "text": text,
                    "role": "user",
                    "conversation_id": conv,
                    "ts": now - (items_per_user - i) * 3600.0,
                }
                for i, (text, conv) in enumerate(memory_texts(items_per_user, u * 37))
            ]
            r = client.post(
                f"/admin/users/mem-user-{u}/import", params={"tenant": "default"}, json={"items": items}
            )
            r.raise_for_status()
        for u in range(rpm_users):
            r = client.post(
                f"/admin/users/rpm-user-{u}/history",
                params={"tenant": "default"},
                json={"items": rpm_history(u, history), "build": True},
            )
            r.raise_for_status()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            open_jobs = sum(
                len(client.get("/admin/jobs", params={"status": s}).json()["data"])
                for s in ("pending", "running")
            )
            if open_jobs == 0:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("seeding jobs did not finish in 600 s")
        stored = {
            f"mem-user-{u}": client.get(f"/admin/users/mem-user-{u}").json().get("items")
            for u in range(memory_users)
        }
        rpm = {
            f"rpm-user-{u}": client.get(f"/admin/users/rpm-user-{u}/rpm").json().get("entries")
            for u in range(rpm_users)
        }
    return {"memory_items": stored, "rpm_entries": rpm, "seconds": round(time.monotonic() - started, 1)}
