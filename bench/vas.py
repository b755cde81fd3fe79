"""VAS bench: reward vs beta per shipped reward, VAS vs Best-of-N at equal base-token budget, cost per answer
for both value backends, and what differing base/value tokenizers cost.

    .venv/bin/python -m bench.vas        # everything, README numbers (resumable: rerun continues)
    .venv/bin/python -m bench.vas --sections cost --tag quiet   # clean-machine timing rows
    .venv/bin/python -m bench.vas --sections llama_cost --tag quiet   # in-process llama.cpp base, per step

The defaults are the README run (32 held-out prompts, 20 tokens, beta 0/3/8, budget on 16 prompts, block K=4,
3 prompts for the tokenizer replay and the cost rows).

Base: SmolLM2-135M-Instruct (Q4_1) on llama.cpp (started here unless --base-url). Value models: the SmolLM2-135M
backbone with a head trained per reward on base-model samples of TRAIN prompts (head only, 2 CPU cores);
evaluation on HELD_OUT prompts, paired by seed across rows. Per-answer records are cached under --work so that
an interrupted run continues; bench/results/vas.json and vas.png are rebuilt from the cache at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bench.vas_cost import cost_section
from bench.vas_cost_llama import llama_cost_section
from bench.vas_data import HELD_OUT, REWARD_OPTIONS, TRAIN, RowCache, reward_fn, summarize
from bench.vas_report import plot, print_tables
from reasoning.vas.backends import TorchBackend, ValueBackend
from reasoning.vas.base_lm import BaseLM, CompletionsLM, TokenChoice, httpx_post
from reasoning.vas.decoding import ComposedValue, DecodeParams, decode
from reasoning.vas.training import Sample, TrainConfig, collect_samples, read_samples, train_value_model
from reasoning.vas.value_model import default_backbone, render_prompt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
REWARDS = ["conciseness", "readability", "sentiment", "formality"]
SECTIONS = ["train", "sweep", "budget", "tokenizer", "cost", "llama_cost"]



class Recorder:
    """A BaseLM that remembers every top-k step (partial answer, candidates) for the tokenizer replay."""

    def __init__(self, base: BaseLM) -> None:
        self.base = base
        self.steps: list[dict[str, Any]] = []

    @property
    def stats(self) -> Any:
        return self.base.stats

    async def top_tokens(self, messages: Any, partial: str, k: int) -> list[TokenChoice]:
        cands = await self.base.top_tokens(messages, partial, k)
        self.steps.append({"partial": partial, "cands": [[c.text, c.logprob] for c in cands]})
        return cands

    async def sample(self, *args: Any) -> Any:
        return await self.base.sample(*args)


class Bench:
    def __init__(self, args: argparse.Namespace, base: CompletionsLM, tok: Any, cache: RowCache) -> None:
        self.args, self.base, self.tok, self.cache = args, base, tok, cache
        self.prompts = HELD_OUT[: args.prompts]
        self.paths: dict[str, Path] = {}
        self.backends: dict[str, TorchBackend] = {}
        self.load: dict[str, list[float]] = {}

    def mark_load(self, label: str) -> None:
        self.load[label] = [round(x, 2) for x in os.getloadavg()]

    def params(self, **kw: Any) -> DecodeParams:
        return DecodeParams(top_k=self.args.top_k, max_tokens=self.args.max_tokens, **kw)

    async def answer(
        self, backend: ValueBackend | None, prompt: str, params: DecodeParams, record: bool = False
    ) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}]
        value = None
        if backend is not None and params.beta > 0:
            value = ComposedValue([(1.0, backend.session(), render_prompt(self.tok, messages))])
        base: Any = Recorder(self.base) if record else self.base
        started = time.perf_counter()
        res = await decode(base, messages, value, params)
        row = {
            "prompt": prompt,
            "text": res.text,
            "wall_s": time.perf_counter() - started,
            **res.details(params.mode, params.beta),
        }
        if record:
            row["trace"] = base.steps
        return row

    async def rows(
        self,
        key: str,
        backend: ValueBackend | None,
        params: DecodeParams,
        prompts: list[str],
        record: bool = False,
    ) -> list[dict[str, Any]]:
        """Answers for `prompts` (seed = prompt index), resumed from the cache."""
        done = self.cache.get(key)
        for i in tqdm(
            range(len(done), len(prompts)), desc=key, unit="answer", initial=len(done), total=len(prompts)
        ):
            done.append(await self.answer(backend, prompts[i], params.model_copy(update={"seed": i}), record))
            self.cache.save()
        return done[: len(prompts)]

    # -- training -------------------------------------------------------------------------------------------
    async def train(self, backbone: Path) -> None:
        run = Path(self.args.work)
        samples = read_samples(run / "samples.jsonl")
        if len({s.prompt for s in samples}) < len(TRAIN[: self.args.train_prompts]):
            samples = await collect_samples(
                TRAIN[: self.args.train_prompts],
                self.base,
                reward_fn("sentiment"),
                run / "samples.jsonl",
                self.args.per_prompt,
                self.args.max_tokens,
                seed=0,
            )
        config = TrainConfig(epochs=self.args.epochs, lr=3e-3, batch_size=8, trainable="head", seed=0)
        for name in tqdm(REWARDS, desc="training value heads", unit="model"):
            out = run / "models" / name
            if not (out / "model" / "config.json").is_file():
                reward = reward_fn(name)
                rescored = [Sample(s.prompt, s.response, reward.score(s.prompt, s.response)) for s in samples]
                res = await asyncio.to_thread(
                    train_value_model,
                    rescored,
                    backbone,
                    out,
                    config,
                    {"reward": name, **REWARD_OPTIONS.get(name, {})},
                    False,
                )
                assert res.export_dir is not None
            self.paths[name] = out / "model"
            self.backends[name] = TorchBackend(out / "model", name, threads=1)
        self.train_info = {
            "train_prompts": len({s.prompt for s in samples}),
            "train_samples": len(samples),
            "epochs": self.args.epochs,
            "epoch_losses": {
                n: json.loads((p / "rapport_value.json").read_text())["epoch_losses"]
                for n, p in self.paths.items()
            },
        }

    # -- reward vs beta (token level) ---------------------------------------------------------------------------
    async def sweep(self) -> list[dict[str, Any]]:
        plain = await self.rows("token:b0", None, self.params(beta=0.0), self.prompts)
        out = []
        for name in REWARDS:
            reward = reward_fn(name)
            base_scores = [reward.score(a["prompt"], a["text"]) for a in plain]
            out.append({"reward": name, "beta": 0.0, **summarize(base_scores, plain)})
            for beta in [b for b in self.args.betas if b > 0]:
                record = name == self.args.trace_reward and beta == self.args.budget_beta
                answers = await self.rows(
                    f"token:{name}:b{beta:g}",
                    self.backends[name],
                    self.params(beta=beta),
                    self.prompts,
                    record,
                )
                scores = [reward.score(a["prompt"], a["text"]) for a in answers]
                out.append({"reward": name, "beta": beta, **summarize(scores, answers, base_scores)})
        return out

    # -- VAS vs Best-of-N at an equal base-token budget ------------------------------------------------------------
    async def pool(self, n: int) -> list[dict[str, Any]]:
        """N whole sampled answers per prompt with best_of_n's seeds: Best-of-n for n <= N selects from it."""
        done = self.cache.get(f"pool:{n}")
        prompts = self.prompts[: self.args.budget_prompts]
        for i in tqdm(range(len(done), len(prompts)), desc=f"pool of {n}", initial=len(done), total=len(prompts)):
            rng, messages = random.Random(i), [{"role": "user", "content": self.prompts[i]}]
            c0, t0 = self.base.stats.calls, self.base.stats.tokens
            started = time.perf_counter()
            blocks = [
                await self.base.sample(messages, "", self.args.max_tokens, 1.0, 1.0, rng.randrange(2**31))
                for _ in range(n)
            ]
            done.append(
                {
                    "prompt": self.prompts[i],
                    "texts": [b.text for b in blocks],
                    "tokens": [b.tokens for b in blocks],
                    "wall_s": time.perf_counter() - started,
                    "calls": self.base.stats.calls - c0,
                    "base_tokens": self.base.stats.tokens - t0,
                }
            )
            self.cache.save()
        return done[: len(prompts)]

    async def best_of(self, name: str, pool: list[dict[str, Any]], n: int, oracle: bool) -> dict[str, Any]:
        reward, backend = reward_fn(name), self.backends[name]
        scores, answers = [], []
        for item in pool:
            texts = item["texts"][:n]
            started = time.perf_counter()
            if oracle:
                vals = [reward.score(item["prompt"], t) for t in texts]
            else:
                messages = [{"role": "user", "content": item["prompt"]}]
                vals = await backend.session().score(render_prompt(self.tok, messages), texts)
            pick = max(range(n), key=lambda j: vals[j])
            scores.append(reward.score(item["prompt"], texts[pick]))
            answers.append(
                {
                    "text": texts[pick],
                    "base_tokens": sum(item["tokens"][:n]),
                    "upstream_calls": n,
                    "value_calls": 0 if oracle else 1,
                    "steps": 1,
                    "value_ms": 0.0 if oracle else (time.perf_counter() - started) * 1000,
                    "wall_s": item["wall_s"] * n / len(item["texts"]) + time.perf_counter() - started,
                }
            )
        return {"scores": scores, "answers": answers}

    async def budget(self) -> list[dict[str, Any]]:
        kmax = max(self.args.budget_k)
        pool = await self.pool(kmax)
        out = []
        for name in REWARDS:
            reward = reward_fn(name)
            first = [reward.score(it["prompt"], it["texts"][0]) for it in pool]
            one = [
                {
                    "text": it["texts"][0],
                    "base_tokens": it["tokens"][0],
                    "upstream_calls": 1,
                    "steps": 1,
                    "wall_s": it["wall_s"] / len(it["texts"]),
                }
                for it in pool
            ]
            out.append({"reward": name, "method": "sample (best-of-1)", "k": 1, **summarize(first, one)})
            for k in self.args.budget_k:
                bo = await self.best_of(name, pool, k, oracle=False)
                out.append(
                    {
                        "reward": name,
                        "method": f"best-of-{k}",
                        "k": k,
                        **summarize(bo["scores"], bo["answers"], first),
                    }
                )
                if k not in self.args.block_k:
                    continue
                params = self.params(
                    mode="block",
                    beta=1.0,
                    block_candidates=k,
                    block_tokens=self.args.block_tokens,
                    block_select="argmax",
                )
                answers = await self.rows(f"block:{name}:K{k}", self.backends[name], params, self.prompts[: self.args.budget_prompts])
                scores = [reward.score(a["prompt"], a["text"]) for a in answers]
                out.append(
                    {
                        "reward": name,
                        "method": f"block VAS K={k} M={self.args.block_tokens}",
                        "k": k,
                        **summarize(scores, answers, first),
                    }
                )
            orc = await self.best_of(name, pool, kmax, oracle=True)
            out.append(
                {
                    "reward": name,
                    "method": f"best-of-{kmax}, true reward (oracle)",
                    "k": kmax,
                    **summarize(orc["scores"], orc["answers"], first),
                }
            )
        return out

    # -- cost per answer, both value backends (same value model) -------------------------------------------------
async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from bench.vas_tokenizer import tokenizer_section

    run = Path(args.work)  # created by main()
    backbone = default_backbone(run / "backbones")
    tok = AutoTokenizer.from_pretrained(str(backbone))
    post, client = httpx_post(args.base_url)
    # Sampling calls use the same top-k nucleus as token-level VAS at beta 0, so all rows share a base policy.
    base = CompletionsLM(
        post,
        lambda m: render_prompt(tok, m),
        model="smollm2",
        extra={"top_k": args.top_k, "min_p": 0.0, "top_p": 1.0, "repeat_penalty": 1.0},
    )
    cache = RowCache(run / "rows.json")
    bench = Bench(args, base, tok, cache)
    # Sections not run now keep their earlier results (e.g. a quiet cost-only run beside a shared full one).
    out = Path(args.out)
    old = json.loads((out / "vas.json").read_text()) if (out / "vas.json").is_file() else {}
    results: dict[str, Any] = old if "configs" in old else {}
    # A run of the llama_cost section alone (its own quiet rerun) keeps the full run's config, training and
    # load records: its own go under its own key.
    alone = set(args.sections) <= {"llama_cost", "train"}
    run_key = f"llama_cost:{args.tag}" if alone else args.tag
    results.setdefault("configs", {})[run_key] = {
        **{k: v for k, v in vars(args).items() if k not in {"work", "base_url", "out"}},
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": 1,
        "base": "SmolLM2-135M-Instruct Q4_1 (llama.cpp)",
    }
    results.setdefault("load", {})
    try:
        bench.mark_load("start")
        await bench.train(backbone)
        if not alone:
            results["train"] = bench.train_info
        if "sweep" in args.sections:
            bench.mark_load("sweep:start")
            results["beta_sweep"] = await bench.sweep()
        if "budget" in args.sections:
            bench.mark_load("budget:start")
            results["budget"] = await bench.budget()
        if "tokenizer" in args.sections:
            bench.mark_load("tokenizer:start")
            key = f"token:{args.trace_reward}:b{args.budget_beta:g}"
            done = cache.get("tokenizer_result")
            if not done or done[0].get("answers") != args.tok_prompts:
                cache.rows["tokenizer_result"] = [
                    await asyncio.to_thread(tokenizer_section, cache, key, bench.paths[args.trace_reward], tok,
                                            args.budget_beta, args.tok_prompts, run)
                ]
                cache.save()
            results["tokenizer"] = cache.get("tokenizer_result")[0]
        if "cost" in args.sections:
            results.setdefault("cost", {})[args.tag] = await cost_section(bench)
        if "llama_cost" in args.sections:
            results.setdefault("llama_cost", {})[args.tag] = {**await llama_cost_section(bench),
                                                              "train": bench.train_info}
        bench.mark_load("end")
    finally:
        await client.aclose()
    results["load"].update({f"{run_key}:{k}": v for k, v in bench.load.items()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--work", default=str(ROOT / ".rapport" / "bench-vas"))
    parser.add_argument("--out", default=str(RESULTS), help="folder for vas.json and vas.png")
    parser.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS)
    parser.add_argument("--tag", default="shared", help="label of cost rows (e.g. shared / quiet)")
    parser.add_argument("--train-prompts", type=int, default=len(TRAIN))
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=len(HELD_OUT))
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 3.0, 8.0])
    parser.add_argument("--budget-beta", type=float, default=8.0)
    parser.add_argument("--budget-k", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--block-k", type=int, nargs="+", default=[4], help="block VAS candidates K to run")
    parser.add_argument("--budget-prompts", type=int, default=16, help="held-out prompts for the budget section")
    parser.add_argument("--block-tokens", type=int, default=8)
    parser.add_argument("--trace-reward", default="sentiment")
    parser.add_argument("--tok-prompts", type=int, default=3)
    parser.add_argument("--cost-prompts", type=int, default=3)
    parser.add_argument("--no-vllm", dest="vllm", action="store_false")
    parser.add_argument("--llama-cost-prompts", type=int, default=3, help="prompts for the in-process base cost rows")
    parser.add_argument("--llama-max-tokens", type=int, default=100)
    parser.add_argument("--llama-top-k", type=int, default=10)
    parser.add_argument("--llama-candidates", type=int, default=4, help="block K and best-of N there")
    parser.add_argument("--llama-value-threads", type=int, default=1, help="torch threads of the value model there")
    parser.add_argument("--no-llama-bf16", dest="llama_bf16", action="store_false", help="skip the bfloat16 value row")
    # One llama.cpp thread: its threads spin-wait, and two-thread servers side by side on 2 shared cores
    # slow each other down several-fold; VAS alternates upstream and value-model work anyway.
    parser.add_argument("--llama-threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    proc = None
    if args.base_url is None:
        from proxy.local_upstream import packaged_gguf, start_llama_server
        from tests.support.servers import free_port

        port = free_port()
        gguf = packaged_gguf()
        assert gguf is not None
        proc = start_llama_server(
            gguf, port=port, n_ctx=4096, n_threads=args.llama_threads, log_file=Path(args.work) / "llama.log"
        )
        args.base_url = f"http://127.0.0.1:{port}/v1"
    started = time.perf_counter()
    try:
        results = asyncio.run(main_async(args))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    if set(args.sections) <= {"llama_cost", "train"}:
        results["llama_cost"][args.tag]["last_run_s"] = time.perf_counter() - started
    else:
        results["last_run_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vas.json").write_text(json.dumps(results, indent=2))
    if "beta_sweep" in results and "budget" in results:
        plot(results, out / "vas.png")
    print_tables(results)


if __name__ == "__main__":
    main()
