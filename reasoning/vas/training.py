"""Training value models on the base model's own samples (Han et al., 2024).

1. `collect_samples`: for each prompt, sample responses from the frozen base upstream and score them with
   the reward (JSONL, resumable: prompts already there are skipped).
2. `train_value_model`: every response token gets a TD(lambda) return, the reward sitting at the last token,
   computed by the generalised-advantage recursion over the value model's own current estimates; the loss
   is half the masked squared error between values and returns, over several epochs. Checkpoints after each
   epoch make a run resumable; the loss curve is saved as a PNG; the result is exported for transformers
   and vLLM.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field

from reasoning.vas.base_lm import BaseLM
from reasoning.vas.rewards import Reward
from reasoning.vas.value_model import backbone, export, head, new_value_model, render_prompt

log = logging.getLogger("rapport.vas.train")

CHECKPOINT = "checkpoint.pt"
EXPORT_DIR = "model"


class TrainConfig(BaseModel):
    epochs: int = Field(default=3, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=8, ge=1)
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    # "head": the value head only (hidden states cached once); "last:N": also the last N blocks; "all".
    trainable: str = Field(default="head", pattern=r"^(head|all|last:\d+)$")
    normalize_rewards: bool = True
    clip_reward: float | None = Field(default=5.0, gt=0)
    max_length: int = Field(default=384, ge=8)
    seed: int = 0


@dataclass
class Sample:
    prompt: str
    response: str
    reward: float


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per optimiser step
    epoch_losses: list[float] = field(default_factory=list)
    export_dir: Path | None = None
    resumed_from_epoch: int = 0


def read_samples(path: Path) -> list[Sample]:
    if not path.is_file():
        return []
    return [Sample(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


async def collect_samples(
    prompts: list[str],
    base: BaseLM,
    reward: Reward,
    out: Path,
    per_prompt: int = 4,
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[Sample]:
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    done = {s.prompt for s in read_samples(out)}
    todo = [p for p in prompts if p not in done]
    rng = random.Random(seed)
    with out.open("a") as fh:
        for prompt in tqdm(todo, desc="sampling base model", disable=not progress, unit="prompt"):
            messages = [{"role": "user", "content": prompt}]
            rows = []
            for _ in range(per_prompt):
                block = await base.sample(messages, "", max_tokens, temperature, top_p, rng.randrange(2**31))
                rows.append(Sample(prompt, block.text, float(reward.score(prompt, block.text))))
            # A prompt's samples are written together so that a resumed run never sees half a prompt.
            fh.write("".join(json.dumps(r.__dict__) + "\n" for r in rows))
            fh.flush()
    return read_samples(out)


def shaped_rewards(samples: list[Sample], config: TrainConfig) -> list[float]:
    rewards = [s.reward for s in samples]
    if config.normalize_rewards and len(rewards) > 1:
        mean = sum(rewards) / len(rewards)
        std = (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5 or 1.0
        rewards = [(r - mean) / std for r in rewards]
    if config.clip_reward is not None:
        c = config.clip_reward
        rewards = [max(-c, min(c, r)) for r in rewards]
    return rewards


def td_lambda_returns(values: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor, gamma: float,
                      lam: float) -> torch.Tensor:
    """Returns per position for [B, T] values whose valid positions are a left-aligned run (mask).

    The reward arrives at each row's last valid position; beyond it the value is 0 (episode over).
    A_t = delta_t + gamma*lam*A_{t+1}, delta_t = r_t + gamma*V_{t+1} - V_t; return_t = A_t + V_t.
    """
    values = values.detach() * mask
    batch, steps = values.shape
    lengths = mask.sum(dim=1).long()
    r = torch.zeros_like(values)
    r[torch.arange(batch), (lengths - 1).clamp(min=0)] = rewards
    advantages = torch.zeros_like(values)
    last = torch.zeros(batch)
    for t in reversed(range(steps)):
        next_v = values[:, t + 1] if t + 1 < steps else torch.zeros(batch)
        delta = r[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return (advantages + values) * mask


def _encode(tokenizer: Any, sample: Sample, max_length: int) -> tuple[list[int], int]:
    """(ids, start): value positions run from `start` (the prompt's last token: V of the empty answer)."""
    prompt_ids = tokenizer(render_prompt(tokenizer, [{"role": "user", "content": sample.prompt}]),
                           add_special_tokens=False).input_ids
    resp_ids = tokenizer(sample.response, add_special_tokens=False).input_ids
    ids = (prompt_ids + resp_ids)[-max_length:]
    start = max(0, len(ids) - len(resp_ids) - 1)
    return ids, start


def _set_trainable(model: Any, spec: str) -> None:
    for p in model.parameters():
        p.requires_grad = spec == "all"
    for p in head(model).parameters():
        p.requires_grad = True
    if spec.startswith("last:"):
        n = int(spec.split(":")[1])
        core = backbone(model)
        for layer in list(core.layers)[-n:] if n else []:
            for p in layer.parameters():
                p.requires_grad = True
        for p in core.norm.parameters():
            p.requires_grad = n > 0


def _windows(model: Any, encoded: list[tuple[list[int], int]], idx: list[int], pad: int,
             features: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Values over each sample's response window, left-aligned: ([B, T] values, [B, T] mask)."""
    windows = [len(encoded[i][0]) - encoded[i][1] for i in idx]
    width = max(windows)
    if features is not None:
        hidden = torch.zeros(len(idx), width, features[idx[0]].shape[-1])
        for row, i in enumerate(idx):
            hidden[row, : windows[row]] = features[i]
        values = head(model)(hidden).squeeze(-1)
    else:
        longest = max(len(encoded[i][0]) for i in idx)
        ids = torch.tensor([encoded[i][0] + [pad] * (longest - len(encoded[i][0])) for i in idx])
        att = torch.tensor([[1] * len(encoded[i][0]) + [0] * (longest - len(encoded[i][0])) for i in idx])
        full = head(model)(backbone(model)(input_ids=ids, attention_mask=att).last_hidden_state).squeeze(-1)
        values = torch.zeros(len(idx), width)
        for row, i in enumerate(idx):
            s = encoded[i][1]
            values[row, : windows[row]] = full[row, s : s + windows[row]]
    mask = torch.tensor([[1.0] * w + [0.0] * (width - w) for w in windows])
    return values, mask


def train_value_model(
    samples: list[Sample],
    backbone_dir: Path,
    out_dir: Path,
    config: TrainConfig,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    from tqdm.auto import tqdm

    if not samples:
        raise ValueError("no samples to train on")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model, tokenizer = new_value_model(backbone_dir, seed=config.seed)
    _set_trainable(model, config.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    result = TrainResult()
    ckpt = out_dir / CHECKPOINT
    start_epoch = 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        # Same settings (more epochs allowed) continue where the last run stopped; others start over.
        if _resumable(state.get("config"), config):
            model.load_state_dict(state["trainable"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, result.losses, result.epoch_losses = state["epoch"], state["losses"], state["epoch_losses"]
            result.resumed_from_epoch = start_epoch
    rewards = torch.tensor(shaped_rewards(samples, config))
    encoded = [_encode(tokenizer, s, config.max_length) for s in samples]
    pad = model.config.pad_token_id or 0
    features: list[torch.Tensor] | None = None
    if config.trainable == "head" and start_epoch < config.epochs:
        # The frozen backbone's hidden states never change: compute them once.
        model.eval()
        with torch.inference_mode():
            features = [
                backbone(model)(input_ids=torch.tensor([ids])).last_hidden_state[0, s:].clone()
                for ids, s in tqdm(encoded, desc="backbone features", disable=not progress, unit="sample")
            ]
    rng = random.Random(config.seed)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = list(range(len(samples)))
        rng.shuffle(order)
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        epoch_losses = []
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, unit="batch")
        for idx in bar:
            values, mask = _windows(model, encoded, idx, pad, features)
            returns = td_lambda_returns(values, mask, rewards[idx], config.gamma, config.lam)
            loss = 0.5 * (((values - returns) ** 2) * mask).sum() / mask.sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            epoch_losses.append(float(loss))
            bar.set_postfix(loss=f"{float(loss):.4f}")
        result.losses.extend(epoch_losses)
        result.epoch_losses.append(sum(epoch_losses) / len(epoch_losses))
        if on_epoch is not None:
            on_epoch(epoch + 1, result.epoch_losses[-1])
        trainable = {k: v for k, v in model.state_dict().items() if k in {n for n, p in model.named_parameters() if p.requires_grad}}
        torch.save(
            {"epoch": epoch + 1, "trainable": trainable, "optimizer": optimizer.state_dict(), "losses": result.losses,
             "epoch_losses": result.epoch_losses, "config": config.model_dump()},
            ckpt,
        )
    plot_losses(result, out_dir / "loss.png")
    info = {**(meta or {}), "train": config.model_dump(), "samples": len(samples),
            "epoch_losses": result.epoch_losses}
    result.export_dir = export(model, tokenizer, out_dir / EXPORT_DIR, info)
    return result


def _resumable(saved: dict[str, Any] | None, config: TrainConfig) -> bool:
    if saved is None:
        return False
    now = config.model_dump()
    return {k: v for k, v in saved.items() if k != "epochs"} == {k: v for k, v in now.items() if k != "epochs"} and (
        saved["epochs"] <= now["epochs"]
    )


def plot_losses(result: TrainResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(result.losses) + 1), result.losses, lw=0.8, label="batch")
    if result.epoch_losses:
        per = max(1, len(result.losses) // len(result.epoch_losses))
        ax.plot([per * (i + 1) for i in range(len(result.epoch_losses))], result.epoch_losses, "o-", label="epoch mean")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("0.5 * masked MSE")
    ax.set_title("value-model loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
