"""VAS decoding: token-level (top-k + value shift), block-level (K blocks of M tokens), Best-of-N.

Token level follows Han et al. (2024): at each step the base model's top-k tokens and log-probabilities
are shifted by beta times the centred value of each extended prefix, and the next token is sampled with
temperature and top-p from the result. Block level does the same per block of tokens for upstreams without
log-probabilities (or where a call per token is too slow); Best-of-N is the baseline with the same scorer.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reasoning.vas.backends import ValueSession
from reasoning.vas.base_lm import BaseLM, Messages

Emit = Callable[[str], Awaitable[None]]


class DecodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["token", "block", "best_of_n"] = "token"
    beta: float = Field(default=1.0, ge=0.0, le=1000.0)
    top_k: int = Field(default=20, ge=1, le=100)
    temperature: float = Field(default=1.0, gt=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=1, le=4096)
    seed: int | None = None
    block_tokens: int = Field(default=8, ge=1, le=512)
    block_candidates: int = Field(default=4, ge=1, le=64)
    block_select: Literal["softmax", "argmax"] = "softmax"
    best_of: int = Field(default=4, ge=1, le=64)


@dataclass
class ComposedValue:
    """Several value models as one: sum_i w_i * V_i, each model seeing the chat in its own template."""

    parts: list[tuple[float, ValueSession, str]]  # (weight, session, rendered prompt)

    async def score(self, response: str, continuations: list[str]) -> list[float]:
        results = await asyncio.gather(*(s.score(prompt + response, continuations) for _, s, prompt in self.parts))
        total = [0.0] * len(continuations)
        for (weight, _, _), values in zip(self.parts, results, strict=True):
            for i, v in enumerate(values):
                total[i] += weight * v
        return total

    def stats(self) -> dict[str, Any]:
        calls = sum(s.stats.calls for _, s, _ in self.parts)
        return {
            "value_calls": calls,
            "value_ms": round(sum(s.stats.seconds for _, s, _ in self.parts) * 1000, 1),
            "value_tokens_run": sum(s.stats.tokens_run for _, s, _ in self.parts),
            "value_tokens_rerun": sum(s.stats.tokens_rerun for _, s, _ in self.parts),
        }

    def close(self) -> None:
        for _, s, _ in self.parts:
            s.close()


@dataclass
class DecodeResult:
    text: str
    finish_reason: str
    steps: int = 0
    base_tokens: int = 0
    upstream_calls: int = 0
    upstream_ms: float = 0.0
    ms: float = 0.0
    value: dict[str, Any] = field(default_factory=dict)

    def details(self, mode: str, beta: float) -> dict[str, Any]:
        return {
            "mode": mode,
            "beta": beta,
            "steps": self.steps,
            "upstream_calls": self.upstream_calls,
            "base_tokens": self.base_tokens,
            "upstream_ms": round(self.upstream_ms, 1),
            "ms": round(self.ms, 1),
            **self.value,
        }


def centre(values: Sequence[float]) -> list[float]:
    mean = sum(values) / len(values)
    return [v - mean for v in values]


def sample_index(scores: Sequence[float], temperature: float, top_p: float, rng: random.Random) -> int:
    """Sample from softmax(scores / temperature) restricted to the smallest top-p nucleus."""
    scaled = [s / temperature for s in scores]
    peak = max(scaled)
    weights = [math.exp(s - peak) for s in scaled]
    total = sum(weights)
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    kept: list[int] = []
    mass = 0.0
    for i in order:
        kept.append(i)
        mass += weights[i] / total
        if mass >= top_p:
            break
    r = rng.random() * sum(weights[i] for i in kept)
    for i in kept:
        r -= weights[i]
        if r <= 0:
            return i
    return kept[-1]


def _finish(result: DecodeResult, base: BaseLM, value: ComposedValue | None, started: float, calls0: int,
            tokens0: int, secs0: float) -> DecodeResult:
    result.upstream_calls = base.stats.calls - calls0
    result.base_tokens = base.stats.tokens - tokens0
    result.upstream_ms = (base.stats.seconds - secs0) * 1000
    result.ms = (time.perf_counter() - started) * 1000
    result.value = value.stats() if value is not None else {"value_calls": 0}
    return result


async def token_vas(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None
) -> DecodeResult:
    rng = random.Random(params.seed)
    started, c0, t0, s0 = time.perf_counter(), base.stats.calls, base.stats.tokens, base.stats.seconds
    text, finish, steps = "", "length", 0
    while steps < params.max_tokens:
        steps += 1
        cands = await base.top_tokens(messages, text, params.top_k)
        scores = [c.logprob for c in cands]
        if value is not None and params.beta > 0 and len(cands) > 1:
            # The end candidate's value is the value of the answer as it stands.
            values = await value.score(text, ["" if c.is_end else c.text for c in cands])
            scores = [s + params.beta * v for s, v in zip(scores, centre(values), strict=True)]
        chosen = cands[sample_index(scores, params.temperature, params.top_p, rng)]
        if chosen.is_end:
            finish = "stop"
            break
        text += chosen.text
        if emit is not None:
            await emit(chosen.text)
    return _finish(DecodeResult(text, finish, steps), base, value, started, c0, t0, s0)


async def block_vas(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None
) -> DecodeResult:
    rng = random.Random(params.seed)
    started, c0, t0, s0 = time.perf_counter(), base.stats.calls, base.stats.tokens, base.stats.seconds
    text, finish, steps, used = "", "length", 0, 0
    while used < params.max_tokens:
        steps += 1
        m = min(params.block_tokens, params.max_tokens - used)
        blocks = await asyncio.gather(
            *(
                base.sample(messages, text, m, params.temperature, params.top_p, rng.randrange(2**31))
                for _ in range(params.block_candidates)
            )
        )
        if value is not None and params.beta > 0 and len(blocks) > 1:
            values = await value.score(text, [b.text for b in blocks])
            if params.block_select == "argmax":
                pick = max(range(len(blocks)), key=lambda i: values[i])
            else:
                pick = sample_index([params.beta * v for v in values], 1.0, 1.0, rng)
        else:
            pick = rng.randrange(len(blocks))
        block = blocks[pick]
        text += block.text
        used += max(1, block.tokens)
        if emit is not None and block.text:
            await emit(block.text)
        if block.finished:
            finish = "stop"
            break
    return _finish(DecodeResult(text, finish, steps), base, value, started, c0, t0, s0)


async def best_of_n(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None
) -> DecodeResult:
    rng = random.Random(params.seed)
    started, c0, t0, s0 = time.perf_counter(), base.stats.calls, base.stats.tokens, base.stats.seconds
    samples = await asyncio.gather(
        *(
            base.sample(messages, "", params.max_tokens, params.temperature, params.top_p, rng.randrange(2**31))
            for _ in range(params.best_of)
        )
    )
    if value is not None and len(samples) > 1:
        values = await value.score("", [s.text for s in samples])
        pick = max(range(len(samples)), key=lambda i: values[i])
    else:
        pick = 0
    best = samples[pick]
    if emit is not None and best.text:
        await emit(best.text)
    result = DecodeResult(best.text, "stop" if best.finished else "length", 1)
    return _finish(result, base, value, started, c0, t0, s0)


DECODERS = {"token": token_vas, "block": block_vas, "best_of_n": best_of_n}


async def decode(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None
) -> DecodeResult:
    return await DECODERS[params.mode](base, messages, value, params, emit)
