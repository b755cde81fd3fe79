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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reasoning.vas.answer import Answer, Emit
from reasoning.vas.backends import ValueBackendDown, ValueSession
from reasoning.vas.base_lm import BaseLM, Block, Messages, TokenChoice
from reasoning.vas.bounds import Budget, DeadlineReached, Limits

__all__ = ["ComposedValue", "DecodeParams", "DecodeResult", "Emit", "Limits", "decode"]


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
    # OpenAI `stop`: the answer ends before the first occurrence of any of these (not sent).
    stop: list[str] = Field(default_factory=list, max_length=4)


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
    prompt_tokens: int | None = None  # as the upstream reported it; None when it did not
    # Set when steering stopped before the answer ended (a budget, the deadline, the value backend).
    stopped: str | None = None
    stop_reason: str | None = None

    def details(self, mode: str, beta: float) -> dict[str, Any]:
        extra = {} if self.stopped is None else {"stopped": self.stopped, "stopped_reason": self.stop_reason}
        return {
            **extra,
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


class _Run:
    """One answer's bookkeeping: the budget, the answer text (with `stop`), and the plain finish."""

    def __init__(self, base: BaseLM, value: ComposedValue | None, params: DecodeParams, limits: Limits,
                 emit: Emit | None) -> None:
        self.base, self.value, self.params = base, value, params
        self.rng = random.Random(params.seed)
        self.started = time.perf_counter()
        self.c0, self.t0, self.s0 = base.stats.calls, base.stats.tokens, base.stats.seconds
        self.budget = Budget(limits, lambda: base.stats.calls, self._passes)
        self.answer = Answer(params.stop, emit)
        self.ambiguous_empty = 0

    def _passes(self) -> int:
        return int(self.value.stats()["value_calls"]) if self.value is not None else 0

    def steering(self, candidates: int = 2) -> bool:
        return self.value is not None and self.params.beta > 0 and candidates > 1

    def passes_per_step(self) -> int:
        return len(self.value.parts) if self.value is not None and self.steering() else 0

    async def score(self, response: str, continuations: list[str]) -> list[float] | None:
        """Values of the continuations, or None once the value backend failed (steering stops, reported)."""
        assert self.value is not None
        try:
            return await self.value.score(response, continuations)
        except ValueBackendDown as exc:
            self.budget.stop("value_backend_down", f"value backend down: {exc}")
            return None

    async def finish_plainly(self, messages: Messages, tokens_left: int) -> str:
        """Steering stopped early: one plain completion of the same prefix ends the answer."""
        if tokens_left <= 0:
            return "length"
        p = self.params
        block = await self.base.sample(messages, self.answer.text, tokens_left, p.temperature, p.top_p,
                                       self.rng.randrange(2**31))
        if await self.answer.add(block.text) or block.finished:
            return "stop"
        return "length"

    async def result(self, finish: str, steps: int) -> DecodeResult:
        await self.answer.flush()
        result = DecodeResult(self.answer.text, finish, steps)
        base = self.base
        result.upstream_calls = base.stats.calls - self.c0
        result.base_tokens = base.stats.tokens - self.t0
        result.upstream_ms = (base.stats.seconds - self.s0) * 1000
        result.ms = (time.perf_counter() - self.started) * 1000
        result.value = self.value.stats() if self.value is not None else {"value_calls": 0}
        result.prompt_tokens = base.stats.prompt_tokens
        if self.budget.stopped is not None:
            result.stopped, result.stop_reason = self.budget.stopped, self.budget.reason
        if self.ambiguous_empty:
            result.value["ambiguous_empty_tokens"] = self.ambiguous_empty
        return result


async def token_vas(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None,
    limits: Limits | None = None,
) -> DecodeResult:
    run = _Run(base, value, params, limits or Limits(), emit)
    finish, steps = "length", 0
    while steps < params.max_tokens and run.budget.allows(1, run.passes_per_step()):
        steps += 1
        try:
            cands, scores = await run.budget.within_deadline(_token_step(run, messages))
        except DeadlineReached:
            break
        if scores is None:
            break  # the value backend failed: the rest is plain
        chosen = cands[sample_index(scores, params.temperature, params.top_p, run.rng)]
        if chosen.is_end and chosen.ambiguous:
            # The server cannot say whether this "" ends the answer or is a byte token: a plain completion
            # of the same prefix settles it (the upstream's own sampler decodes bytes right).
            run.ambiguous_empty += 1
            run.budget.stop("ambiguous_empty_token", 'the base keyed a candidate "" that may be a byte token')
            break
        if chosen.is_end or await run.answer.add(chosen.text):
            return await run.result("stop", steps)
    if run.budget.stopped is not None:
        finish = await run.finish_plainly(messages, params.max_tokens - steps)
    return await run.result(finish, steps)


async def _token_step(run: _Run, messages: Messages) -> tuple[list[TokenChoice], list[float] | None]:
    cands = await run.base.top_tokens(messages, run.answer.text, run.params.top_k)
    scores = [c.logprob for c in cands]
    if run.steering(len(cands)):
        # The end candidate's value is the value of the answer as it stands.
        values = await run.score(run.answer.text, ["" if c.is_end else c.text for c in cands])
        if values is None:
            return cands, None
        scores = [s + run.params.beta * v for s, v in zip(scores, centre(values), strict=True)]
    return cands, scores


async def block_vas(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None,
    limits: Limits | None = None,
) -> DecodeResult:
    run = _Run(base, value, params, limits or Limits(), emit)
    finish, steps, used = "length", 0, 0
    while used < params.max_tokens and run.budget.allows(params.block_candidates, run.passes_per_step()):
        steps += 1
        m = min(params.block_tokens, params.max_tokens - used)
        try:
            block = await run.budget.within_deadline(_block_step(run, messages, m))
        except DeadlineReached:
            break
        if block is None:
            break
        used += max(1, block.tokens)
        if await run.answer.add(block.text) or block.finished:
            return await run.result("stop", steps)
    if run.budget.stopped is not None:
        finish = await run.finish_plainly(messages, params.max_tokens - used)
    return await run.result(finish, steps)


async def _block_step(run: _Run, messages: Messages, m: int) -> Block | None:
    p, rng = run.params, run.rng
    seeds = [rng.randrange(2**31) for _ in range(p.block_candidates)]
    blocks = await asyncio.gather(
        *(run.base.sample(messages, run.answer.text, m, p.temperature, p.top_p, seed) for seed in seeds)
    )
    if not run.steering(len(blocks)):
        return blocks[rng.randrange(len(blocks))]
    values = await run.score(run.answer.text, [b.text for b in blocks])
    if values is None:
        return None
    if p.block_select == "argmax":
        return blocks[max(range(len(blocks)), key=lambda i: values[i])]
    return blocks[sample_index([p.beta * v for v in values], 1.0, 1.0, rng)]


async def best_of_n(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None,
    limits: Limits | None = None,
) -> DecodeResult:
    run = _Run(base, value, params, limits or Limits(), emit)
    if not run.budget.allows(params.best_of, run.passes_per_step(), reserve=0):
        finish = await run.finish_plainly(messages, params.max_tokens)
        return await run.result(finish, 0)
    try:
        best = await run.budget.within_deadline(_best_of_step(run, messages))
    except DeadlineReached:
        finish = await run.finish_plainly(messages, params.max_tokens)
        return await run.result(finish, 1)
    hit = await run.answer.add(best.text)
    return await run.result("stop" if hit or best.finished else "length", 1)


async def _best_of_step(run: _Run, messages: Messages) -> Block:
    p, rng = run.params, run.rng
    seeds = [rng.randrange(2**31) for _ in range(p.best_of)]
    samples = await asyncio.gather(
        *(run.base.sample(messages, "", p.max_tokens, p.temperature, p.top_p, seed) for seed in seeds)
    )
    # Each sample is judged as the client would get it: cut at its first stop sequence.
    texts = [_cut_at_stop(s.text, p.stop) for s in samples]
    if not run.steering(len(samples)):
        return _cut_block(samples[0], texts[0])
    values = await run.score("", texts)
    if values is None:
        return _cut_block(samples[0], texts[0])  # a plain sample, as at beta 0
    pick = max(range(len(samples)), key=lambda i: values[i])
    return _cut_block(samples[pick], texts[pick])


def _cut_at_stop(text: str, stop: list[str]) -> str:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(hits)] if hits else text


def _cut_block(block: Block, text: str) -> Block:
    return block if text == block.text else Block(text, True, block.tokens)


DECODERS = {"token": token_vas, "block": block_vas, "best_of_n": best_of_n}


async def decode(
    base: BaseLM, messages: Messages, value: ComposedValue | None, params: DecodeParams, emit: Emit | None = None,
    limits: Limits | None = None,
) -> DecodeResult:
    return await DECODERS[params.mode](base, messages, value, params, emit, limits)
