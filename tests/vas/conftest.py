"""VAS fixtures: the SmolLM2 backbone from the packaged GGUF and one value model trained on real samples.

Training happens once per test session, on samples from the real SmolLM2 upstream (llama.cpp), scored by
the sentiment reward over a tiny prompt set, with the value head alone trained so that it fits on 2 cores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from reasoning.vas.base_lm import CompletionsLM, httpx_post
from reasoning.vas.rewards import SentimentReward
from reasoning.vas.training import Sample, TrainConfig, TrainResult, collect_samples, train_value_model
from reasoning.vas.value_model import default_backbone, export, new_value_model, render_prompt
from tests.vas.data import TRAIN_PROMPTS

TRAIN_CONFIG = TrainConfig(epochs=20, lr=3e-3, batch_size=8, trainable="head", seed=0)


@dataclass
class Trained:
    samples: list[Sample]
    result: TrainResult
    model_dir: Path
    untrained_dir: Path
    backbone_dir: Path


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # Two cores shared with llama.cpp: one torch thread avoids the two fighting over both.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return default_backbone(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="session")
def trained(smollm2_url: str, backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    from transformers import AutoTokenizer

    run = tmp_path_factory.mktemp("vas-run")
    tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))

    async def sample() -> list[Sample]:
        post, client = httpx_post(smollm2_url)
        try:
            lm = CompletionsLM(post, lambda m: render_prompt(tokenizer, m), model="smollm2")
            return await collect_samples(TRAIN_PROMPTS, lm, SentimentReward(), run / "samples.jsonl",
                                         per_prompt=3, max_tokens=32, seed=0, progress=False)
        finally:
            await client.aclose()

    samples = asyncio.run(sample())
    result = train_value_model(samples, backbone_dir, run, TRAIN_CONFIG, {"reward": "sentiment"}, progress=False)
    assert result.export_dir is not None
    model, tok = new_value_model(backbone_dir, seed=TRAIN_CONFIG.seed)
    untrained = export(model, tok, run / "untrained", {"reward": "none"})
    yield Trained(samples, result, result.export_dir, untrained, backbone_dir)
