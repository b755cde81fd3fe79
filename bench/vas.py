"""VAS bench: reward vs beta per shipped reward, VAS vs Best-of-N at equal base-token budget, cost per answer.

    python -m bench.vas [--base-url http://127.0.0.1:PORT/v1] [--vllm-url http://127.0.0.1:PORT --vllm-model NAME]

Base model: SmolLM2-135M-Instruct (Q4_1) served by llama.cpp (started here unless --base-url is given).
Value models: SmolLM2-135M backbone + head trained per reward on the same base-model samples (head only,
so it fits on 2 CPU cores). Writes bench/results/vas.json and bench/results/vas.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from reasoning.vas.backends import TorchBackend, ValueBackend, VLLMBackend
from reasoning.vas.base_lm import CompletionsLM, httpx_post
from reasoning.vas.decoding import ComposedValue, DecodeParams, decode
from reasoning.vas.rewards import load_reward
from reasoning.vas.training import Sample, TrainConfig, collect_samples, read_samples, train_value_model
from reasoning.vas.value_model import default_backbone, render_prompt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REWARDS = ["conciseness", "readability", "sentiment", "formality"]
REWARD_OPTIONS: dict[str, dict[str, Any]] = {"conciseness": {"target_words": 8}}

TRAIN = [
    "Write one sentence about a sunny holiday at the beach.", "Explain what a noun is.",
    "Describe a car accident in one sentence.", "Write a short note to your manager asking for a day off.",
    "Write one sentence about a rainy, cold Monday.", "Explain photosynthesis briefly.",
    "Describe a wedding in one sentence.", "Tell a friend about your new phone.",
    "Write one sentence about failing an exam.", "Explain how to boil an egg.",
    "Describe a walk in the park.", "Write a formal complaint about a late delivery.",
    "Write one sentence about a good friend.", "Explain why the sky is blue.",
    "Describe a storm that damaged a house.", "Say hello to a colleague.",
    "What is your favorite food and why?", "Explain the rules of chess briefly.",
    "Describe a long wait at the hospital.", "Write a thank-you message to a teacher.",
]
HELD_OUT = [
    "Write one sentence about your weekend.", "Explain what a computer does.",
    "Describe a visit to your family.", "Write a short message to a new neighbor.",
    "Describe a day at work.", "Explain how rain forms.",
]


async def sample_once(base: CompletionsLM, run: Path, per_prompt: int) -> list[Sample]:
    probe = load_reward("sentiment")
    return await collect_samples(TRAIN, base, probe, run / "samples.jsonl", per_prompt, 32, seed=0)


def train_all(samples: list[Sample], backbone: Path, run: Path) -> dict[str, Path]:
    out = {}
    for name in REWARDS:
        reward = load_reward(name, **REWARD_OPTIONS.get(name, {}))
        rescored = [Sample(s.prompt, s.response, reward.score(s.prompt, s.response)) for s in samples]
        res = train_value_model(rescored, backbone, run / name, TrainConfig(epochs=12, lr=3e-3), {"reward": name},
                                progress=False)
        assert res.export_dir is not None
        out[name] = res.export_dir
    return out


async def answer(base: CompletionsLM, backend: ValueBackend | None, tok: Any, prompt: str,
                 params: DecodeParams) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    value = None
    if backend is not None and params.beta > 0:
        value = ComposedValue([(1.0, backend.session(), render_prompt(tok, messages))])
    started = time.perf_counter()
    res = await decode(base, messages, value, params)
    return {"text": res.text, "wall_s": time.perf_counter() - started, **res.details(params.mode, params.beta)}


async def run_method(base: CompletionsLM, backend: ValueBackend | None, tok: Any, reward_name: str,
                     params: DecodeParams, prompts: list[str]) -> dict[str, Any]:
    reward = load_reward(reward_name, **REWARD_OPTIONS.get(reward_name, {}))
    rows = []
    for i, prompt in enumerate(prompts):
        row = await answer(base, backend, tok, prompt, params.model_copy(update={"seed": i}))
        row["reward"] = reward.score(prompt, row["text"])
        rows.append(row)
    mean = statistics.fmean

    return {
        "reward": reward_name, "mode": params.mode, "beta": params.beta,
        "mean_reward": mean(r["reward"] for r in rows),
        "sem": statistics.stdev(r["reward"] for r in rows) / len(rows) ** 0.5 if len(rows) > 1 else 0.0,
        "base_tokens": mean(r["base_tokens"] for r in rows), "upstream_calls": mean(r["upstream_calls"] for r in rows),
        "value_calls": mean(r.get("value_calls", 0) for r in rows), "wall_s": mean(r["wall_s"] for r in rows),
        "value_ms": mean(r.get("value_ms", 0.0) for r in rows),
        "value_tokens_rerun": mean(r.get("value_tokens_rerun", 0) for r in rows),
        "samples": [r["text"] for r in rows[:2]],
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in REWARDS:
        rows = [r for r in results["beta_sweep"] if r["reward"] == name]
        ax1.errorbar([r["beta"] for r in rows], [r["mean_reward"] for r in rows], [r["sem"] for r in rows],
                     marker="o", label=name, capsize=3)
    ax1.set_xlabel("beta")
    ax1.set_ylabel("mean reward (held-out prompts)")
    ax1.set_title("token-level VAS: reward vs beta")
    ax1.legend()
    for row in results["budget"]:
        ax2.errorbar(row["base_tokens"], row["mean_reward"], row["sem"], marker="o", capsize=3)
        ax2.annotate(f"{row['label']}", (row["base_tokens"], row["mean_reward"]), fontsize=8,
                     xytext=(4, 4), textcoords="offset points")
    ax2.set_xlabel("base-model tokens generated per answer")
    ax2.set_ylabel(f"mean {results['budget_reward']} reward")
    ax2.set_title("reward vs compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.work)
    backbone = default_backbone(run / "backbones")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(backbone))
    post, client = httpx_post(args.base_url)
    base = CompletionsLM(post, lambda m: render_prompt(tok, m), model="smollm2", extra={"repeat_penalty": 1.0})
    samples = read_samples(run / "samples.jsonl") if args.reuse else []
    if not samples:
        samples = await sample_once(base, run, args.per_prompt)
    models = await asyncio.to_thread(train_all, samples, backbone, run)
    backends = {name: TorchBackend(path, name, threads=1) for name, path in models.items()}
    prompts = HELD_OUT[: args.prompts]
    common = {"top_k": args.top_k, "max_tokens": args.max_tokens}
    results: dict[str, Any] = {"config": {**vars(args), "machine": platform.machine(), "torch_threads": 1,
                                          "train_samples": len(samples)}}
    sweep = []
    for name in REWARDS:
        for beta in args.betas:
            sweep.append(await run_method(base, backends[name], tok, name, DecodeParams(beta=beta, **common), prompts))
    results["beta_sweep"] = sweep
    budget_reward = "sentiment"
    bt = args.max_tokens
    k = 4
    configs = [
        ("plain (beta=0)", DecodeParams(beta=0.0, **common)),
        (f"token VAS beta={args.budget_beta}", DecodeParams(beta=args.budget_beta, **common)),
        (f"block VAS K={k} M=8", DecodeParams(mode="block", beta=args.budget_beta, block_candidates=k, block_tokens=8,
                                              max_tokens=bt)),
        (f"best-of-{k}", DecodeParams(mode="best_of_n", best_of=k, max_tokens=bt, beta=1.0)),
    ]
    budget = []
    for label, params in configs:
        row = await run_method(base, backends[budget_reward], tok, budget_reward, params, prompts)
        row["label"] = label
        budget.append(row)
    results["budget"], results["budget_reward"] = budget, budget_reward
    cost = [dict(r, backend="torch") for r in budget[1:3]]
    if args.vllm_url:
        vb = VLLMBackend(args.vllm_url, args.vllm_model)
        for label, params in configs[1:3]:
            row = await run_method(base, vb, tok, budget_reward, params, prompts[:2])
            cost.append(dict(row, label=label, backend="vllm"))
        await vb.close()
    results["backends"] = cost
    await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--vllm-url", default=None)
    parser.add_argument("--vllm-model", default="value")
    parser.add_argument("--work", default=str(ROOT / ".rapport" / "bench-vas"))
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--per-prompt", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 2.0, 5.0])
    parser.add_argument("--budget-beta", type=float, default=5.0)
    parser.add_argument("--reuse", action="store_true", help="reuse samples from an earlier run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    proc = None
    if args.base_url is None:
        from proxy.local_upstream import packaged_gguf, start_llama_server
        from tests.support.servers import free_port

        port = free_port()
        (ROOT / ".rapport").mkdir(exist_ok=True)
        gguf = packaged_gguf()
        assert gguf is not None
        log = ROOT / ".rapport" / "bench-vas-llama.log"
        proc = start_llama_server(gguf, port=port, n_ctx=4096, n_threads=2, log_file=log)
        args.base_url = f"http://127.0.0.1:{port}/v1"
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{args.base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
    started = time.perf_counter()
    try:
        results = asyncio.run(main_async(args))
    finally:
        if proc is not None:
            proc.terminate()
    results["total_s"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vas.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "vas.png")
    console = Console()
    t1 = Table("reward", "beta", "mean reward", "±sem", "s/answer", "value ms/answer", title="token-level VAS vs beta")
    for r in results["beta_sweep"]:
        t1.add_row(r["reward"], f"{r['beta']:g}", f"{r['mean_reward']:.3f}", f"{r['sem']:.3f}", f"{r['wall_s']:.1f}",
                   f"{r['value_ms']:.0f}")
    console.print(t1)
    t2 = Table("method", "backend", "mean reward", "base tokens", "upstream calls", "value calls", "s/answer",
               title=f"compute ({results['budget_reward']})")
    for r in results["budget"] + [r for r in results["backends"] if r["backend"] == "vllm"]:
        t2.add_row(r["label"], r.get("backend", "torch"), f"{r['mean_reward']:.3f}", f"{r['base_tokens']:.0f}",
                   f"{r['upstream_calls']:.1f}", f"{r['value_calls']:.1f}", f"{r['wall_s']:.1f}")
    console.print(t2)


if __name__ == "__main__":
    main()
