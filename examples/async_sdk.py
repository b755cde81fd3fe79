"""The async SDK: `AsyncRapport` for the admin side, `AsyncOpenAI` (from `.openai(user=...)`) for chat.

Two users talk at once (asyncio.gather), then their memories are read back side by side. Start Rapport first
(`bash scripts/serve.sh`), then:
    RAPPORT_URL=http://127.0.0.1:8080 RAPPORT_API_KEY=... RAPPORT_ADMIN_KEY=... python examples/async_sdk.py
(RAPPORT_TENANT: the tenant of the API key, default "default"; RAPPORT_MODEL: the model, default smollm2).
"""

from __future__ import annotations

import asyncio
import os

from rapport import AsyncRapport

MODEL = os.environ.get("RAPPORT_MODEL", "smollm2")
SAID = {"bob": "I run marathons and eat pasta before races.", "carol": "I'm learning Japanese for a trip to Kyoto."}


async def talk(rp: AsyncRapport, user: str, text: str) -> str:
    async with rp.openai(user=user) as chat:
        reply = await chat.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=32
        )
    return reply.choices[0].message.content or ""


async def remembered(rp: AsyncRapport, user: str, within_s: float = 30.0) -> list[str]:
    # Memory is written after the answer, off the request path: poll with a deadline instead of sleeping blind.
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        texts = [m.text for m in (await rp.memories.list(user)).data]
        if texts or asyncio.get_running_loop().time() > deadline:
            return texts
        await asyncio.sleep(0.2)


async def main() -> None:
    async with AsyncRapport(
        os.environ.get("RAPPORT_URL", "http://127.0.0.1:8080"),
        api_key=os.environ.get("RAPPORT_API_KEY", "sk-local"),
        admin_key=os.environ.get("RAPPORT_ADMIN_KEY"),
        tenant=os.environ.get("RAPPORT_TENANT", "default"),
    ) as rp:
        replies = await asyncio.gather(*(talk(rp, user, text) for user, text in SAID.items()))
        for user, reply in zip(SAID, replies, strict=True):
            print(f"{user} got: {reply}")
        memories = await asyncio.gather(*(remembered(rp, user) for user in SAID))
        for user, texts in zip(SAID, memories, strict=True):
            print(f"{user} remembers: {texts}")
        for user in SAID:
            await rp.users.forget(user)


if __name__ == "__main__":
    asyncio.run(main())
