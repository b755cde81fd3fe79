"""Memory with the Rapport SDK: chat as a user, then inspect, search, edit, summarize, export and forget.

Start Rapport first (`bash scripts/serve.sh`), then:
    RAPPORT_URL=http://127.0.0.1:8080 RAPPORT_API_KEY=... RAPPORT_ADMIN_KEY=... python examples/memory_sdk.py
(in open local mode, without keys, any key works).
"""

from __future__ import annotations

import json
import os
import time

from rapport import Rapport

rp = Rapport(
    os.environ.get("RAPPORT_URL", "http://127.0.0.1:8080"),
    api_key=os.environ.get("RAPPORT_API_KEY", "sk-local"),
    admin_key=os.environ.get("RAPPORT_ADMIN_KEY"),
)
model = os.environ.get("RAPPORT_MODEL", "smollm2")

# 1. An ordinary OpenAI client, bound to the end user "alice".
chat = rp.openai(user="alice")
chat.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "I'm vegetarian and I cook for two kids."}],
    max_tokens=32,
)

# 2. The exchange is stored off the request path; wait for it to show up.
deadline = time.monotonic() + 30
while not rp.memories.list("alice").data and time.monotonic() < deadline:
    time.sleep(0.2)

# 3. A later conversation: Rapport retrieves the preference into the prompt; `rapport` reports what it added.
reply = chat.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What should I make for dinner?"}],
    max_tokens=64,
    extra_body={"rapport": {"memory": {"k": 3}}},
)
print(reply.choices[0].message.content)
print(json.dumps(reply.model_extra.get("rapport"), indent=2))

# 4. Inspect and edit.
for memory in rp.memories.search("alice", "food preferences", limit=3):
    print(f"{memory.score:.2f}  {memory.text}")
note = rp.memories.add("alice", "Allergic to peanuts.", role="note")
rp.memories.update("alice", note.id, text="Severely allergic to peanuts.")

# 5. A task-aware summary, written offline by the utility LLM through the job queue.
[job_id] = rp.summaries.regenerate("alice")
print(rp.jobs.wait(job_id, timeout=300).status, [s.text for s in rp.summaries.list("alice")])

# 6. Export, then forget everything about alice (memory, summaries, jobs, RPM data).
backup = rp.users.export("alice")
print(len(backup["items"]), "items exported")
print(rp.users.forget("alice").removed)
