"""Memory with the Rapport SDK: chat as a user, then see what Rapport remembers, search, add, edit, export, forget.

Start Rapport first (`bash scripts/serve.sh`), then:
    RAPPORT_URL=http://127.0.0.1:8080 RAPPORT_API_KEY=... RAPPORT_ADMIN_KEY=... python examples/memory_sdk.py
(in open local mode, without keys, any key works). RAPPORT_TENANT names the tenant of the API key (default
"default"); RAPPORT_MODEL the model (default smollm2).
"""

from __future__ import annotations

import json
import os
import time

from rapport import Rapport

USER = os.environ.get("RAPPORT_USER", "alice")
MODEL = os.environ.get("RAPPORT_MODEL", "smollm2")

rp = Rapport(
    os.environ.get("RAPPORT_URL", "http://127.0.0.1:8080"),
    api_key=os.environ.get("RAPPORT_API_KEY", "sk-local"),
    admin_key=os.environ.get("RAPPORT_ADMIN_KEY"),
    tenant=os.environ.get("RAPPORT_TENANT", "default"),
)

# 1. An ordinary OpenAI client, bound to the end user.
chat = rp.openai(user=USER)
chat.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "I'm vegetarian and I cook for two kids."}], max_tokens=32
)

# 2. The exchange is stored off the request path (the answer does not wait for it): poll until it shows up.
deadline = time.monotonic() + 30
while not rp.memories.list(USER).data and time.monotonic() < deadline:
    time.sleep(0.2)

# 3. A later conversation: Rapport retrieves the preference into the prompt; `rapport` reports what it added.
reply = chat.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "What should I make for dinner?"}],
    max_tokens=64,
    extra_body={"rapport": {"memory": {"k": 3}}},
)
print("assistant:", reply.choices[0].message.content)
memory_stage = next(s for s in (reply.model_extra or {})["rapport"]["stages"] if s["name"] == "memory")
print("memory stage:", json.dumps(memory_stage["detail"]))

# 4. Search, add and edit (an edit is embedded again, so search finds the new text).
for memory in rp.memories.search(USER, "food preferences", limit=3):
    print(f"search: {memory.score:.2f} {memory.text}")
note = rp.memories.add(USER, "Allergic to peanuts.", role="note")
edited = rp.memories.update(USER, note.id, text="Severely allergic to peanuts.")
print("edited:", edited.text)

# 5. Export everything Rapport holds about the user, one section per part (memory, rpm, vas, responses, ...):
# a JSON document `users.import_` takes back. Then forget them everywhere.
backup = rp.users.export(USER)
print("exported parts:", ", ".join(sorted(backup["parts"])))
print("forgotten:", json.dumps(rp.users.forget(USER).removed))
print("left after forget:", len(rp.memories.list(USER).data))
