"""VAS (value-augmented sampling): steer a user's answers with a value model trained on a shipped reward.

Server side, once: train a value model on one of the shipped rewards (conciseness, readability, sentiment,
formality; see docs/methods/vas.md) from your base model's own samples, and name it in the settings:
    rapport values train --prompts prompts.txt --reward sentiment --base-url http://127.0.0.1:8081/v1 \
        --out runs/sentiment --trainable head
    # settings: vas: {value_models: [{name: sentiment, path: runs/sentiment/model}]}
(or serve the exported model with vLLM and give `backend: vllm` and its `url`). Then run this against Rapport:
    RAPPORT_URL=http://127.0.0.1:8080 RAPPORT_API_KEY=... RAPPORT_ADMIN_KEY=... python examples/vas_reward.py
RAPPORT_VALUE_MODEL names the configured value model (default sentiment); RAPPORT_TENANT the tenant of the API
key (default "default"); RAPPORT_MODEL the model (default smollm2).
"""

from __future__ import annotations

import os

from rapport import Rapport

USER = os.environ.get("RAPPORT_USER", "erin")
MODEL = os.environ.get("RAPPORT_MODEL", "smollm2")
VALUE_MODEL = os.environ.get("RAPPORT_VALUE_MODEL", "sentiment")

rp = Rapport(
    os.environ.get("RAPPORT_URL", "http://127.0.0.1:8080"),
    api_key=os.environ.get("RAPPORT_API_KEY", "sk-local"),
    admin_key=os.environ.get("RAPPORT_ADMIN_KEY"),
    tenant=os.environ.get("RAPPORT_TENANT", "default"),
)
print("value models:", [(m["name"], m["loaded"]) for m in rp.vas.models()["data"]])

# 1. Per-user weights (admin side): this user's answers are steered towards the value model; beta is how hard.
rp.vas.set(USER, {VALUE_MODEL: 1.0}, beta=4.0)
chat = rp.openai(user=USER)
reply = chat.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Describe your weekend in one sentence."}],
    max_tokens=16,
    # VAS samples from softmax((log p + beta * value) / temperature); 0 takes the best-scored token each step,
    # so this example prints the same answer every run. Leave it out to sample.
    temperature=0,
    extra_body={"rapport": {"vas": True}},  # VAS on for this call, with the user's weights
)
vas = next(s for s in (reply.model_extra or {})["rapport"]["stages"] if s["name"] == "vas")["detail"]
print("steered:", reply.choices[0].message.content)
print("weights:", vas["weights"], "from", vas["weights_from"], "| beta:", vas["beta"], "| steps:", vas["steps"])

# 2. Or per request: weights, beta and the number of candidate tokens scored at each step.
reply = chat.chat.completions.create(
    model=MODEL,
    messages=[{"role": "user", "content": "Describe your morning in one sentence."}],
    max_tokens=16,
    temperature=0,
    extra_body={"rapport": {"vas": {"weights": {VALUE_MODEL: 1.0}, "beta": 8.0, "top_k": 5}}},
)
vas = next(s for s in (reply.model_extra or {})["rapport"]["stages"] if s["name"] == "vas")["detail"]
print("per request:", reply.choices[0].message.content, "| beta:", vas["beta"], "| from", vas["weights_from"])
rp.vas.delete(USER)
