"""`rapport values train|list|export` end to end on a tiny prompt set against the real SmolLM2 upstream."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from proxy.cli_values import app
from reasoning.vas.value_model import load_value_model, read_meta

# Session fixtures sample and train on 2 shared cores: their set-up can take many minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def test_train_list_export(smollm2_url: str, backbone_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hello.\n{\"prompt\": \"Name a fruit.\"}\n")
    run = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "--prompts", str(prompts), "--out", str(run), "--reward", "conciseness",
            "--reward-option", "target_words=3", "--base-url", smollm2_url, "--backbone", str(backbone_dir),
            "--samples-per-prompt", "2", "--max-tokens", "12", "--epochs", "2", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len((run / "samples.jsonl").read_text().splitlines()) == 4
    assert (run / "loss.png").is_file() and (run / "checkpoint.pt").is_file()
    meta = read_meta(run / "model")
    assert meta["reward"] == "conciseness" and meta["reward_options"] == {"target_words": 3}

    # Resuming: nothing is sampled again and training continues from the checkpoint.
    again = runner.invoke(app, [*args[:-4], "--epochs", "3", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert "resumed from epoch 2" in again.output
    assert len((run / "samples.jsonl").read_text().splitlines()) == 4

    listed = runner.invoke(app, ["list", str(tmp_path)])
    assert listed.exit_code == 0 and "conciseness" in listed.output

    out = tmp_path / "exported"
    exported = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert "--runner pooling" in exported.output
    model, _ = load_value_model(out)
    assert model.config.num_labels == 1
