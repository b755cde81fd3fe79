"""Rapport's light Python SDK (httpx + pydantic only): chat through `openai`, inspect memory as admin.

from rapport import Rapport
rp = Rapport("http://127.0.0.1:8080", api_key="rk-...", admin_key="...")
client = rp.openai(user="alice")          # an openai.OpenAI bound to alice
rp.memories.search("alice", "food preferences")
"""

from rapport._async import AsyncRapport
from rapport._base import NotFoundError, RapportError
from rapport._sync import Rapport

__all__ = ["AsyncRapport", "NotFoundError", "Rapport", "RapportError"]
