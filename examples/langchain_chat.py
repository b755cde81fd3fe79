"""LangChain's `ChatOpenAI` through Rapport: the same class, `base_url` swapped, the end user named in a header.

Needs `pip install langchain-openai`. Start Rapport first (`bash scripts/serve.sh`), then:
    RAPPORT_BASE_URL=http://127.0.0.1:8080/v1 RAPPORT_API_KEY=... python examples/langchain_chat.py
(RAPPORT_MODEL: the model, default smollm2).
"""

from __future__ import annotations

import os

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

llm = ChatOpenAI(
    model=os.environ.get("RAPPORT_MODEL", "smollm2"),
    base_url=os.environ.get("RAPPORT_BASE_URL", "http://127.0.0.1:8080/v1"),
    api_key=SecretStr(os.environ.get("RAPPORT_API_KEY", "sk-local")),
    default_headers={"X-Rapport-User": os.environ.get("RAPPORT_USER", "frank")},
    max_completion_tokens=60,
)

# Rapport puts what it knows about the user into the one system message, next to your own.
answer = llm.invoke([SystemMessage("You are a travel agent."), HumanMessage("I only travel by train.")])
print("invoke:", answer.content)
print("stream:", "".join(str(piece.content) for piece in llm.stream("Plan a weekend trip for me.")))
