"""The base model as VAS sees it: top-k next tokens with log-probabilities, and sampled blocks.

VAS continues a partial answer, which the chat API cannot express everywhere. Two clients cover the
upstreams: `CompletionsLM` renders the chat with a template and calls `/completions` (llama.cpp, vLLM,
most OpenAI-style servers), and `ChatPrefillLM` sends the partial answer as a final assistant message with
`continue_final_message` (vLLM's chat API). Both speak through a `post(path, body) -> json` callable, so the
proxy can route them through its upstream router and the CLI through plain httpx.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

PostFn = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
Messages = list[dict[str, Any]]

# How the end of the answer shows among top tokens: llama.cpp renders special tokens as "".
END_TOKENS = frozenset({"", "<|im_end|>", "</s>", "<|endoftext|>", "<|eot_id|>", "<|end|>"})


class BaseLMError(ValueError):
    """The base model's answer cannot drive VAS (e.g. no log-probabilities); the proxy answers 502."""


@dataclass
class TokenChoice:
    text: str
    logprob: float
    # Servers that key top log-probabilities by decoded text (llama.cpp's OpenAI API) render the end of
    # text and every partial UTF-8 byte token alike as "", merged into one entry: such a "" is the end
    # only when the server confirms it (its greedy token ended the answer); otherwise it is ambiguous.
    ambiguous: bool = False

    @property
    def is_end(self) -> bool:
        return self.text in END_TOKENS


@dataclass
class Block:
    text: str
    finished: bool
    tokens: int


@dataclass
class CallStats:
    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0
    # The prompt's token count as the upstream reported it (usage of a call with no partial answer yet).
    prompt_tokens: int | None = None

    def note_usage(self, data: dict[str, Any], partial: str) -> None:
        usage = data.get("usage") or {}
        value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not partial and self.prompt_tokens is None and isinstance(value, int) and value > 0:
            self.prompt_tokens = value


class BaseLM(Protocol):
    stats: CallStats

    async def top_tokens(self, messages: Messages, partial: str, k: int) -> list[TokenChoice]: ...

    async def sample(
        self, messages: Messages, partial: str, max_tokens: int, temperature: float, top_p: float, seed: int
    ) -> Block: ...


def httpx_post(base_url: str, api_key: str = "sk-none", timeout: float = 120.0) -> tuple[PostFn, httpx.AsyncClient]:
    """A `post` over plain httpx to an OpenAI-style base URL (".../v1"); close the client when done."""
    client = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", timeout=timeout)

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await client.post(path, json=body, headers={"Authorization": f"Bearer {api_key}"})
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    return post, client


@dataclass
class CompletionsLM:
    post: PostFn
    render: Callable[[Messages], str]
    model: str = "base"
    extra: dict[str, Any] = field(default_factory=dict)
    # Sent with the top-k calls: min_tokens=1 keeps a greedy end-of-answer from returning no logprobs
    # at all (llama.cpp, vLLM); the end token still shows, with its raw log-probability, in the list.
    logprob_extra: dict[str, Any] = field(default_factory=lambda: {"min_tokens": 1})
    stats: CallStats = field(default_factory=CallStats)

    async def _call(self, body: dict[str, Any], sampling: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            # Sampling extras (e.g. llama.cpp's top_k/min_p) must not touch the top-k logprob calls.
            extra = self.extra if sampling else self.logprob_extra
            return await self.post("completions", {"model": self.model, **extra, **body})
        finally:
            self.stats.calls += 1
            self.stats.seconds += time.perf_counter() - started

    async def top_tokens(self, messages: Messages, partial: str, k: int) -> list[TokenChoice]:
        data = await self._call(
            {"prompt": self.render(messages) + partial, "max_tokens": 1, "logprobs": k, "temperature": 0.0}
        )
        self.stats.tokens += 1
        self.stats.note_usage(data, partial)
        choice = data["choices"][0]
        tops = (choice.get("logprobs") or {}).get("top_logprobs") or []
        if not tops:
            if choice.get("finish_reason") == "stop":
                return [TokenChoice("", 0.0)]  # the server ended the answer before any token
            raise BaseLMError("upstream returned no top_logprobs")
        cands = [TokenChoice(t, float(lp)) for t, lp in tops[0].items()]
        return _top_k(_mark_ambiguous(cands, choice.get("finish_reason")), k)

    async def sample(
        self, messages: Messages, partial: str, max_tokens: int, temperature: float, top_p: float, seed: int
    ) -> Block:
        data = await self._call(
            {
                "prompt": self.render(messages) + partial,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
            },
            sampling=True,
        )
        self.stats.note_usage(data, partial)
        choice = data["choices"][0]
        used = int((data.get("usage") or {}).get("completion_tokens") or 0)
        self.stats.tokens += used
        return Block(choice.get("text") or "", choice.get("finish_reason") == "stop", used)


@dataclass
class ChatPrefillLM:
    post: PostFn
    model: str = "base"
    extra: dict[str, Any] = field(default_factory=dict)
    stats: CallStats = field(default_factory=CallStats)

    def _messages(self, messages: Messages, partial: str) -> tuple[Messages, dict[str, Any]]:
        if not partial:
            return messages, {}
        flags = {"continue_final_message": True, "add_generation_prompt": False}
        return [*messages, {"role": "assistant", "content": partial}], flags

    async def _call(self, body: dict[str, Any], sampling: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            # Sampling extras (e.g. llama.cpp's top_k/min_p) must not touch the top-k logprob calls.
            extra = self.extra if sampling else {}
            return await self.post("chat/completions", {"model": self.model, **extra, **body})
        finally:
            self.stats.calls += 1
            self.stats.seconds += time.perf_counter() - started

    async def top_tokens(self, messages: Messages, partial: str, k: int) -> list[TokenChoice]:
        msgs, flags = self._messages(messages, partial)
        data = await self._call(
            {"messages": msgs, **flags, "max_tokens": 1, "logprobs": True, "top_logprobs": k, "temperature": 0.0}
        )
        self.stats.tokens += 1
        self.stats.note_usage(data, partial)
        choice = data["choices"][0]
        content = ((choice.get("logprobs") or {}).get("content")) or []
        if not content:
            if choice.get("finish_reason") == "stop":
                return [TokenChoice("", 0.0)]
            raise BaseLMError("upstream returned no top_logprobs")
        cands = [TokenChoice(t["token"], float(t["logprob"])) for t in content[0].get("top_logprobs") or []]
        if not cands:
            raise BaseLMError("upstream returned no top_logprobs")
        return _top_k(_mark_ambiguous(cands, choice.get("finish_reason")), k)

    async def sample(
        self, messages: Messages, partial: str, max_tokens: int, temperature: float, top_p: float, seed: int
    ) -> Block:
        msgs, flags = self._messages(messages, partial)
        data = await self._call(
            {"messages": msgs, **flags, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed},
            sampling=True,
        )
        self.stats.note_usage(data, partial)
        choice = data["choices"][0]
        used = int((data.get("usage") or {}).get("completion_tokens") or 0)
        self.stats.tokens += used
        text = (choice.get("message") or {}).get("content") or ""
        return Block(text, choice.get("finish_reason") == "stop", used)


def _mark_ambiguous(choices: list[TokenChoice], finish_reason: Any) -> list[TokenChoice]:
    """Flag a "" candidate unless the server confirmed it: the greedy token was "" and ended the answer.

    These calls decode one greedy token, so finish_reason "stop" says that token ended the answer; a ""
    that is not the greedy token (or that did not end it) may be a byte token, not the end. Several ""
    entries in one list are such a collapse seen directly.
    """
    empties = [c for c in choices if c.text == ""]
    if not empties:
        return choices
    greedy = max(choices, key=lambda c: c.logprob)
    for c in empties:
        if len(empties) > 1 or not (c is greedy and finish_reason == "stop"):
            c.ambiguous = True
    return choices


def _top_k(choices: list[TokenChoice], k: int) -> list[TokenChoice]:
    # Servers may add the sampled token to the top list; merging same-text tokens keeps the larger one.
    best: dict[str, TokenChoice] = {}
    for c in choices:
        if c.text not in best or c.logprob > best[c.text].logprob:
            best[c.text] = c
    return sorted(best.values(), key=lambda c: -c.logprob)[:k]
