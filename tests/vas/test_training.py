"""Training on real base-model samples lowers the value loss and teaches the model to rank by reward."""

from __future__ import annotations

from pathlib import Path

import pytest

from reasoning.vas.backends import TorchBackend
from reasoning.vas.training import CHECKPOINT, TrainConfig, train_value_model
from reasoning.vas.value_model import load_value_model, read_meta, render_prompt
from tests.vas.conftest import TRAIN_CONFIG, Trained
from tests.vas.data import RANKING_PAIRS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def ranking_auc(model_dir: Path) -> float:
    """P(V(positive text) > V(negative text)) over all held-out pairs."""
    backend = TorchBackend(model_dir)
    texts = [render_prompt(backend.tokenizer, [{"role": "user", "content": p}]) + t for p, t in RANKING_PAIRS]
    values = backend.score_texts(texts)
    pos, neg = values[0::2], values[1::2]
    return sum(p > n for p in pos for n in neg) / (len(pos) * len(neg))


def test_samples_come_from_the_base_model_and_vary_in_reward(trained: Trained) -> None:
    assert len(trained.samples) == 60
    assert all(s.response.strip() for s in trained.samples)
    rewards = [s.reward for s in trained.samples]
    assert max(rewards) > 0 > min(rewards)


def test_value_loss_goes_down(trained: Trained) -> None:
    losses = trained.result.epoch_losses
    assert len(losses) == TRAIN_CONFIG.epochs
    assert losses[-1] < 0.75 * losses[0]
    assert (trained.model_dir.parent / "loss.png").stat().st_size > 1000


def test_trained_model_ranks_held_out_text_by_reward(trained: Trained) -> None:
    trained_auc = ranking_auc(trained.model_dir)
    untrained_auc = ranking_auc(trained.untrained_dir)
    assert trained_auc >= 0.8
    assert trained_auc > untrained_auc + 0.15, (trained_auc, untrained_auc)


def test_export_loads_as_sequence_classifier(trained: Trained) -> None:
    model, _ = load_value_model(trained.model_dir)
    assert type(model).__name__.endswith("ForSequenceClassification")
    assert model.config.num_labels == 1
    meta = read_meta(trained.model_dir)
    assert meta["reward"] == "sentiment" and meta["samples"] == 60


def test_training_resumes_from_checkpoint(trained: Trained, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, lr=3e-3, trainable="last:1", seed=1)
    small = trained.samples[:8]
    first = train_value_model(small, trained.backbone_dir, tmp_path, config, progress=False)
    assert (tmp_path / CHECKPOINT).is_file() and first.resumed_from_epoch == 0
    again = train_value_model(small, trained.backbone_dir, tmp_path, config, progress=False)
    assert again.resumed_from_epoch == 1 and again.epoch_losses == first.epoch_losses
    # More epochs continue from the checkpoint; other settings start over.
    more = train_value_model(small, trained.backbone_dir, tmp_path, config.model_copy(update={"epochs": 2}),
                             progress=False)
    assert more.resumed_from_epoch == 1 and more.epoch_losses[0] == first.epoch_losses[0]
    assert len(more.epoch_losses) == 2
    other = train_value_model(small, trained.backbone_dir, tmp_path, config.model_copy(update={"lr": 1e-4}),
                              progress=False)
    assert other.resumed_from_epoch == 0 and len(other.epoch_losses) == 1


@pytest.mark.parametrize("spec", ["head", "last:2"])
def test_trainable_parts(trained: Trained, spec: str, tmp_path: Path) -> None:
    import torch

    from reasoning.vas.training import _set_trainable
    from reasoning.vas.value_model import new_value_model

    model, _ = new_value_model(trained.backbone_dir)
    _set_trainable(model, spec)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hidden = model.config.hidden_size
    assert (n == hidden) if spec == "head" else (hidden < n < sum(p.numel() for p in model.parameters()) // 5)
    assert isinstance(n, int) and torch.is_grad_enabled()
