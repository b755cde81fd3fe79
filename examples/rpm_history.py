"""RPM (reasoning-level personalization) from an imported labelled history, then feedback on an answer.

1. Import what the user decided before (input -> their response); RPM builds factors and reasoning paths from it.
2. A similar request is then conditioned on that history (RPM adds it to the upstream prompt).
3. Feedback on that answer's id (a correction) becomes one more history entry.

RPM must be on for the user's requests (settings `rpm.enabled_by_default: true`, or `{"rapport": {"rpm": true}}`
per request as below). Start Rapport first (`bash scripts/serve.sh`), then:
    RAPPORT_URL=http://127.0.0.1:8080 RAPPORT_API_KEY=... RAPPORT_ADMIN_KEY=... python examples/rpm_history.py
(RAPPORT_TENANT: the tenant of the API key, default "default"; RAPPORT_MODEL: the model, default smollm2).
"""

from __future__ import annotations

import os
import time

from rapport import NotFoundError, Rapport

USER = os.environ.get("RAPPORT_USER", "dana")
MODEL = os.environ.get("RAPPORT_MODEL", "smollm2")
HISTORY = [
    {"input": "Pick a restaurant for Friday: Steak House or Green Leaf?", "response": "Green Leaf, I don't eat meat."},
    {"input": "Pick a restaurant for lunch: Burger Barn or Veggie Bowl?", "response": "Veggie Bowl."},
    {"input": "Pick a dish: beef stew or lentil curry?", "response": "Lentil curry."},
]

rp = Rapport(
    os.environ.get("RAPPORT_URL", "http://127.0.0.1:8080"),
    api_key=os.environ.get("RAPPORT_API_KEY", "sk-local"),
    admin_key=os.environ.get("RAPPORT_ADMIN_KEY"),
    tenant=os.environ.get("RAPPORT_TENANT", "default"),
)

# 1. Import the labelled history; the build runs in the background, so wait until every entry is built.
print("imported:", rp.rpm.import_history(USER, HISTORY)["imported"])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    entries = rp.rpm.get(USER)["entries"]  # e.g. {"done": 3} once built
    if entries and set(entries) <= {"done", "skipped"}:
        break
    time.sleep(0.5)
print("built:", entries)

# 2. A similar request: RPM finds the closest past decisions and conditions the answer on them.
chat = rp.openai(user=USER)
reply = chat.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Pick a restaurant for dinner: Grill Palace or Garden Table?"}],
    max_tokens=40,
    extra_body={"rapport": {"rpm": True}},
)
rpm_stage = next(s for s in (reply.model_extra or {})["rapport"]["stages"] if s["name"] == "rpm")
print("answer:", reply.choices[0].message.content)
print("conditioned on:", rpm_stage["detail"].get("history"), "past decisions")

# 3. Feedback on that answer by its id. Rapport remembers the answer just after sending it, so a feedback sent
# in the same instant may not find it yet: retry briefly on 404.
for attempt in range(50):
    try:
        result = rp.feedback(reply.id, user=USER, correction="Garden Table, it has vegetarian mains.")
        break
    except NotFoundError:
        if attempt == 49:
            raise
        time.sleep(0.2)
print("feedback became entries:", result.entry_ids)
print("history now:", len(rp.rpm.get(USER, "rpm/history")["data"]))
