"""Cost per answer with the in-process llama.cpp base (`base_api: llama_cpp`), per step, beside the HTTP base.

Token-level VAS (k candidates, `--llama-max-tokens` tokens), block-level VAS and Best-of-N at equal base
tokens (K blocks of M tokens vs N whole samples), all on SmolLM2-135M (Q4_1 GGUF) in this process and the
same trained SmolLM2 value model (float32, and bfloat16 as an opt-in row). Each base step and value pass
is timed twice: wall clock, and this process's CPU time over the same span. Steps run one after another
(the base and the value model never overlap within an answer, one thread each), so CPU time is the work a
step needs, and wall minus CPU is what other processes on the cores took from it. Block and Best-of-N
sampling calls of one step are issued together and queue on the model's one thread, so a sampling call's
wall time there includes the calls ahead of it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from bench.vas_data import reward_fn, summarize
from reasoning.vas.backends import TorchBackend, ValueBackend
from reasoning.vas.base_lm import Block, Messages, TokenChoice
from reasoning.vas.decoding import ComposedValue, DecodeParams, decode
from reasoning.vas.llama_base import LlamaCppLM, LlamaCppModel
from reasoning.vas.value_model import packaged_gguf, render_prompt

if TYPE_CHECKING:
    from bench.vas import Bench

# The per-step goals of issue 13 (2 cores, SmolLM2 value model, k = 10).
GOALS = {"value_ms": 40.0, "base_ms": 30.0, "token_answer_s": 10.0}


@dataclass
class Clock:
    """Wall and process-CPU milliseconds of each timed call."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def start(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def stop(self, began: tuple[float, float]) -> None:
        self.wall.append((time.perf_counter() - began[0]) * 1000)
        self.cpu.append((time.process_time() - began[1]) * 1000)

    def p50(self) -> dict[str, float | None]:
        return {
            "wall_ms_p50": round(statistics.median(self.wall), 2) if self.wall else None,
            "cpu_ms_p50": round(statistics.median(self.cpu), 2) if self.cpu else None,
            "calls": len(self.wall),
        }


class TimedBase:
    """A BaseLM that times each top-k step and each sampling call of the one it wraps."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.stats = base.stats  # the same counters, mutated in place by the wrapped base
        self.steps, self.samples = Clock(), Clock()

    async def top_tokens(self, messages: Messages, partial: str, k: int) -> list[TokenChoice]:
        began = self.steps.start()
        try:
            return list(await self.base.top_tokens(messages, partial, k))
        finally:
            self.steps.stop(began)

    async def sample(self, messages: Messages, partial: str, max_tokens: int, temperature: float, top_p: float,
                     seed: int) -> Block:
        began = self.samples.start()
        try:
            block: Block = await self.base.sample(messages, partial, max_tokens, temperature, top_p, seed)
            return block
        finally:
            self.samples.stop(began)


class TimedSession:
    """A ValueSession that times each value pass of the one it wraps."""

    def __init__(self, session: Any, clock: Clock) -> None:
        self.session, self.clock = session, clock
        self.stats = session.stats

    async def score(self, prefix: str, continuations: list[str]) -> list[float]:
        began = self.clock.start()
        try:
            return list(await self.session.score(prefix, continuations))
        finally:
            self.clock.stop(began)

    def close(self) -> None:
        self.session.close()


@dataclass
class Config:
    label: str
    base: str  # "llama_cpp" (in process) or "http" (llama.cpp's OpenAI server)
    value: str  # "-", "float32", "float32-onednn" (weights packed for oneDNN) or "bfloat16"
    params: DecodeParams


def configs(bench: Bench) -> list[Config]:
    a = bench.args
    k, n, m = a.llama_top_k, a.llama_candidates, a.block_tokens
    common = {"top_k": k, "max_tokens": a.llama_max_tokens}
    token = DecodeParams(beta=a.budget_beta, **common)
    out = [
        Config("plain (beta=0)", "llama_cpp", "-", DecodeParams(beta=0.0, **common)),
        Config(f"token VAS k={k} beta={a.budget_beta:g}", "llama_cpp", "float32", token),
        Config(f"token VAS k={k} beta={a.budget_beta:g}", "llama_cpp", "float32-onednn", token),
        Config(f"token VAS k={k} beta={a.budget_beta:g}", "llama_cpp", "bfloat16", token),
        Config(f"block VAS K={n} M={m}", "llama_cpp", "float32",
               DecodeParams(mode="block", beta=1.0, block_candidates=n, block_tokens=m, block_select="argmax",
                            **common)),
        Config(f"best-of-{n}", "llama_cpp", "float32", DecodeParams(mode="best_of_n", beta=1.0, best_of=n, **common)),
        Config(f"token VAS k={k} beta={a.budget_beta:g}", "http", "float32", token),
    ]
    return [c for c in out if c.value != "bfloat16" or a.llama_bf16]


async def llama_cost_section(bench: Bench) -> dict[str, Any]:
    a, tag, name = bench.args, bench.args.tag, bench.args.trace_reward
    # Open-ended prompts, so that answers run long (the goal is stated for a 100-token answer).
    prompts = [p for p in bench.prompts if p.startswith(("Explain", "Describe"))][: a.llama_cost_prompts]
    reward = reward_fn(name)
    model = LlamaCppModel(packaged_gguf(), n_ctx=4096, n_threads=a.llama_threads)
    values: dict[str, ValueBackend] = {"float32": bench.backends[name]}
    values["float32-onednn"] = TorchBackend(bench.paths[name], f"{name}-onednn", threads=1, onednn=True)
    if a.llama_bf16:
        values["bfloat16"] = TorchBackend(bench.paths[name], f"{name}-bf16", threads=1, dtype="bfloat16")
    rows = []
    bench.mark_load(f"llama_cost:{tag}:start")
    # The base waits while the value model runs (token level), so on 2 quiet cores the value pass may take
    # both; on busy shared cores a second thread mostly waits for a core (the default stays 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(a.llama_value_threads)
    try:
        for cfg in configs(bench):
            key = f"llama_cost:{tag}:{cfg.base}:{cfg.value}:{cfg.label}:{a.llama_max_tokens}"
            key += f":t{a.llama_value_threads}" if a.llama_value_threads != 1 else ""
            answers = bench.cache.get(key)
            for i in tqdm(range(len(answers), len(prompts)), desc=f"{cfg.label} ({cfg.base}, {cfg.value})",
                          unit="answer", initial=len(answers), total=len(prompts)):
                base = LlamaCppLM(model, model.render) if cfg.base == "llama_cpp" else bench.base
                answers.append(await _answer(bench, base, values.get(cfg.value), prompts[i],
                                             cfg.params.model_copy(update={"seed": i})))
                bench.cache.save()
            rows.append({"label": cfg.label, "base": cfg.base, "value_dtype": cfg.value,
                         **_per_step(answers), **summarize([reward.score(x["prompt"], x["text"]) for x in answers],
                                                           answers)})
        agreement = _bf16_agreement(bench, values, prompts) if "bfloat16" in values else {}
    finally:
        model.close()
        torch.set_num_threads(threads)
    bench.mark_load(f"llama_cost:{tag}:end")
    return {"reward": name, "prompts": len(prompts), "top_k": a.llama_top_k, "max_tokens": a.llama_max_tokens,
            "value_threads": a.llama_value_threads, "base_threads": a.llama_threads,
            "goals": GOALS, "rows": rows, "bf16_vs_fp32": agreement,
            "load": {k: v for k, v in bench.load.items() if k.startswith(f"llama_cost:{tag}")}}


async def _answer(bench: Bench, base: Any, backend: ValueBackend | None, prompt: str,
                  params: DecodeParams) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    timed, clock = TimedBase(base), Clock()
    value = None
    if backend is not None and params.beta > 0:
        value = ComposedValue([(1.0, TimedSession(backend.session(), clock), render_prompt(bench.tok, messages))])
    began = Clock()
    start = began.start()
    res = await decode(timed, messages, value, params)
    began.stop(start)
    if value is not None:
        value.close()
    return {
        "prompt": prompt,
        "text": res.text,
        "wall_s": began.wall[0] / 1000,
        "cpu_s": began.cpu[0] / 1000,
        **res.details(params.mode, params.beta),
        "step_wall_ms": timed.steps.wall, "step_cpu_ms": timed.steps.cpu,
        "sample_wall_ms": timed.samples.wall, "sample_cpu_ms": timed.samples.cpu,
        "value_wall_ms": clock.wall, "value_cpu_ms": clock.cpu,
    }


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def _per_step(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 over every step of every answer (the first step of an answer also runs the prompt)."""
    def pooled(field_name: str) -> list[float]:
        return [x for a in answers for x in a.get(field_name, [])]

    return {
        "base_step_wall_ms_p50": _median(pooled("step_wall_ms")),
        "base_step_cpu_ms_p50": _median(pooled("step_cpu_ms")),
        "sample_call_wall_ms_p50": _median(pooled("sample_wall_ms")),
        "value_pass_wall_ms_p50": _median(pooled("value_wall_ms")),
        "value_pass_cpu_ms_p50": _median(pooled("value_cpu_ms")),
        "cpu_s": statistics.fmean(a["cpu_s"] for a in answers) if answers else 0.0,
        # Token level: one base step per token, so seconds per 100 tokens whatever length an answer took.
        "s_per_100_steps": (round(100 * sum(a["wall_s"] for a in answers) / max(1, sum(a["steps"] for a in answers)), 2)
                            if answers and answers[0].get("mode") == "token" else None),
    }


def _bf16_agreement(bench: Bench, values: dict[str, ValueBackend], prompts: list[str]) -> dict[str, Any]:
    """How far bfloat16 values sit from float32 ones on the float32 token-VAS answers' texts."""
    fp32, bf16 = values["float32"], values["bfloat16"]
    assert isinstance(fp32, TorchBackend) and isinstance(bf16, TorchBackend)
    texts = []
    for key, answers in bench.cache.rows.items():
        if key.startswith(f"llama_cost:{bench.args.tag}:llama_cpp:float32:token"):
            texts = [render_prompt(bench.tok, [{"role": "user", "content": a["prompt"]}]) + a["text"]
                     for a in answers]
    if not texts:
        return {}
    # Prefixes of each answer too, where the centred differences that steer decoding are read.
    cut = [t[: len(t) - j] for t in texts for j in (0, 5, 17, 40)]
    want, got = fp32.score_texts(cut), bf16.score_texts(cut)
    spread = statistics.pstdev(want) or 1.0
    return {"texts": len(cut), "max_abs_diff": max(abs(x - y) for x, y in zip(got, want, strict=True)),
            "fp32_value_sd": spread}

