"""`rapport values train|list|export`: train value models for VAS on the base model's own samples."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Value models for value-augmented sampling (VAS).", no_args_is_help=True)
console = Console()


def _read_prompts(path: Path) -> list[str]:
    prompts: list[str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            prompts.append(str(json.loads(line)["prompt"]))
        else:
            prompts.append(line)
    if not prompts:
        raise typer.BadParameter(f"{path} holds no prompts")
    return prompts


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
def train(
    prompts: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Prompts: one per line, or JSONL with 'prompt'.")],
    out: Annotated[Path, typer.Option(help="Run directory (samples, checkpoint, loss.png, model/).")],
    reward: Annotated[str, typer.Option(help="Reward name (shipped or a rapport.rewards entry point).")] = "conciseness",
    reward_option: Annotated[list[str], typer.Option("--reward-option", help="key=value for the reward.")] = [],  # noqa: B006
    base_url: Annotated[str, typer.Option(help="OpenAI-style base URL of the base model (…/v1).")] = "http://127.0.0.1:8081/v1",
    base_model: Annotated[str, typer.Option(help="Model name sent to the base upstream.")] = "smollm2",
    api_key: Annotated[str, typer.Option(envvar="RAPPORT_VALUES_API_KEY")] = "sk-none",
    backbone: Annotated[Path | None, typer.Option(help="Backbone checkpoint dir; default SmolLM2-135M from the packaged GGUF.")] = None,
    backbone_cache: Annotated[Path, typer.Option(help="Where the dequantized default backbone is kept.")] = Path(".rapport/vas/backbones"),
    samples_per_prompt: Annotated[int, typer.Option(min=1)] = 4,
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    lr: float = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    gamma: float = 1.0,
    lam: float = 0.95,
    trainable: Annotated[str, typer.Option(help="head | last:N | all")] = "head",
    normalize_rewards: bool = True,
    clip_reward: Annotated[float | None, typer.Option(help="Clip shaped rewards to ±this (after normalization).")] = 5.0,
    seed: int = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
) -> None:
    """Sample answers from the base model, score them, and fit a value model (resumable)."""
    import torch

    from reasoning.vas.base_lm import ChatPrefillLM, httpx_post
    from reasoning.vas.rewards import load_reward
    from reasoning.vas.training import TrainConfig, collect_samples, train_value_model
    from reasoning.vas.value_model import default_backbone

    if threads:
        torch.set_num_threads(threads)
    scorer = load_reward(reward, **_options(reward_option))
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, gamma=gamma, lam=lam, trainable=trainable,
                         normalize_rewards=normalize_rewards, clip_reward=clip_reward, seed=seed)
    prompt_list = _read_prompts(prompts)
    out.mkdir(parents=True, exist_ok=True)

    async def sample() -> list[Any]:
        post, client = httpx_post(base_url, api_key)
        try:
            # Whole answers from scratch: the plain chat API works on every upstream.
            lm = ChatPrefillLM(post, base_model)
            return await collect_samples(prompt_list, lm, scorer, out / "samples.jsonl", samples_per_prompt,
                                         max_tokens, temperature, 1.0, seed)
        finally:
            await client.aclose()

    samples = asyncio.run(sample())
    console.print(f"{len(samples)} samples, mean reward {sum(s.reward for s in samples) / len(samples):.3f}")
    if backbone is None:
        console.print("preparing SmolLM2-135M backbone from the packaged GGUF…")
        backbone = default_backbone(backbone_cache)
    meta = {"reward": reward, "reward_options": _options(reward_option), "base_model": base_model,
            "backbone": str(backbone)}
    result = train_value_model(samples, backbone, out, config, meta)
    if result.resumed_from_epoch:
        console.print(f"resumed from epoch {result.resumed_from_epoch}")
    table = Table("epoch", "loss")
    for i, loss in enumerate(result.epoch_losses, 1):
        table.add_row(str(i), f"{loss:.5f}")
    console.print(table)
    console.print(f"loss curve: {out / 'loss.png'}\nmodel: {result.export_dir}")


def _runs(root: Path) -> list[Path]:
    from reasoning.vas.value_model import META_FILE

    return sorted(p.parent for p in root.rglob(META_FILE))


@app.command("list")
def list_models(root: Annotated[Path, typer.Argument(help="Directory to search for value models.")] = Path(".rapport/vas")) -> None:
    """List exported value models under a directory."""
    from reasoning.vas.value_model import read_meta

    table = Table("path", "reward", "samples", "final loss", "trainable")
    for path in _runs(root):
        meta = read_meta(path)
        losses = meta.get("epoch_losses") or []
        table.add_row(str(path), str(meta.get("reward", "?")), str(meta.get("samples", "?")),
                      f"{losses[-1]:.5f}" if losses else "-", str((meta.get("train") or {}).get("trainable", "?")))
    console.print(table)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="A run dir (or its model/ dir).")],
    out: Annotated[Path, typer.Option(help="Destination directory.")],
) -> None:
    """Copy a trained value model out, check that transformers loads it, and show how to serve it."""
    import torch

    from reasoning.vas.value_model import META_FILE, load_value_model

    src = run / "model" if (run / "model" / META_FILE).is_file() else run
    if not (src / META_FILE).is_file():
        raise typer.BadParameter(f"{run} holds no exported value model")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    model, tokenizer = load_value_model(out)
    with torch.inference_mode():
        value = float(model(**tokenizer("hello", return_tensors="pt")).logits[0, 0])
    console.print(f"exported {type(model).__name__} (num_labels={model.config.num_labels}) to {out}; V('hello')={value:.4f}")
    console.print(
        "serve with vLLM: python -m vllm.entrypoints.openai.api_server "
        f"--model {out} --runner pooling --pooler-config '{{\"use_activation\": false}}' --dtype float32"
    )
