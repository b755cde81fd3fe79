"""The torch value session's prefix cache gives the values of a full recompute, step after step.

The session keeps the KV cache of the prompt and the chosen prefix across steps and scores all
candidates in one forward pass over it (a tree mask: each candidate sees the prefix and itself). These
tests walk random prefixes of the real SmolLM2 backbone, with a head large enough that values are O(1),
and compare each step against running every whole sequence from scratch.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch

from reasoning.vas.backends import TorchBackend, TorchSession
from reasoning.vas.value_model import export, head, new_value_model, render_prompt, token_values

pytestmark = pytest.mark.timeout(300)
# float32 on CPU: the cached and the full pass sum the same products in a different order.
TOL = 2e-4


@pytest.fixture(scope="module")
def backend(backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TorchBackend:
    model, tok = new_value_model(backbone_dir, seed=0)
    with torch.no_grad():
        # The packaged init is near 0 everywhere (so any cache would "match"): spread the values out.
        head(model).weight.normal_(0.0, 0.05)
    return TorchBackend(export(model, tok, tmp_path_factory.mktemp("value") / "model", {"reward": "none"}))


def _full(backend: TorchBackend, seqs: list[list[int]]) -> list[float]:
    with torch.inference_mode():
        return [float(token_values(backend.model, torch.tensor([ids]))[0, -1]) for ids in seqs]


def test_random_prefixes_by_id_match_the_full_recompute(backend: TorchBackend) -> None:
    rng = random.Random(7)
    vocab = backend.tokenizer.vocab_size
    prompt = backend.tokenizer(render_prompt(backend.tokenizer, [{"role": "user", "content": "Hi"}]),
                               add_special_tokens=False).input_ids
    session = backend.session()
    prefix = list(prompt)
    spread, cand_tokens = 0.0, 0
    for step in range(8):
        # Ten candidates, mostly one token, some longer (a byte run completed, a retokenized boundary).
        cands = [[rng.randrange(vocab) for _ in range(rng.choice([1, 1, 1, 2, 3]))] for _ in range(10)]
        seqs = [prefix + c for c in cands]
        cand_tokens += sum(len(c) for c in cands)
        got = session.score_ids(seqs)
        want = _full(backend, seqs)
        assert got == pytest.approx(want, abs=TOL), step
        spread = max(spread, max(want) - min(want))
        if step == 4:
            # Another token inside the cached part: the cache is cut there and the rest run again.
            prefix = [*prefix[: len(prompt) + 1], (prefix[len(prompt) + 1] + 1) % vocab]
        else:
            prefix += rng.choice(cands)
    assert spread > 0.1  # the values differ across candidates, so equality says something
    # Each step ran only the new prefix token and the candidates, not the whole sequence again.
    # (a full recompute runs about 10 * len(prefix) tokens per step)
    assert session.stats.tokens_run <= cand_tokens + len(prompt) + 8 * 3 + 1
    assert session.stats.tokens_rerun > 0


async def test_text_candidates_with_multibyte_tokens_match_the_full_recompute(backend: TorchBackend) -> None:
    session = backend.session()
    assert isinstance(session, TorchSession)
    prefix = render_prompt(backend.tokenizer, [{"role": "user", "content": "Say hi."}]) + "Hello"
    words = [" there", "!", " 你好", "😀", "n't", "", " world", " é", ",", " the"]
    rng = random.Random(3)
    for step in range(6):
        cands = rng.sample(words, len(words))
        got = await session.score(prefix, cands)
        tok = backend.tokenizer
        want = _full(backend, [tok(prefix + c, add_special_tokens=False).input_ids for c in cands])
        assert got == pytest.approx(want, abs=TOL), step
        prefix += cands[0]
    assert session.stats.calls == 6


def test_bfloat16_session_tracks_its_own_full_recompute_and_float32(backend: TorchBackend) -> None:
    half = TorchBackend(backend.path, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    rng = random.Random(11)
    prefix = backend.tokenizer(render_prompt(backend.tokenizer, [{"role": "user", "content": "Hi"}]),
                               add_special_tokens=False).input_ids
    session = half.session()
    for _ in range(3):
        seqs = [[*prefix, rng.randrange(backend.tokenizer.vocab_size)] for _ in range(10)]
        got, want = session.score_ids(seqs), _full(backend, seqs)
        spread = max(want) - min(want)
        # bfloat16 keeps ~3 significant digits: the values stay close to float32's next to their spread.
        assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 0.1 * spread + 0.02
        assert _full(half, seqs) == pytest.approx(got, abs=0.1 * spread + 0.02)
        prefix = seqs[0]


def test_onednn_packed_weights_give_the_same_values(backend: TorchBackend) -> None:
    packed = TorchBackend(backend.path, onednn=True)
    rng = random.Random(5)
    prefix = backend.tokenizer("Hello there, how are you today?", add_special_tokens=False).input_ids
    session = packed.session()
    for _ in range(3):
        seqs = [[*prefix, rng.randrange(backend.tokenizer.vocab_size)] for _ in range(10)]
        assert session.score_ids(seqs) == pytest.approx(_full(backend, seqs), abs=TOL)
        prefix = seqs[0]


def test_the_settings_choose_the_value_models_dtype(backend: TorchBackend, tmp_path: Path) -> None:
    from reasoning.vas.config import VASSettings
    from reasoning.vas.engine import VASEngine

    settings = VASSettings(value_models=[{"name": "v", "path": str(backend.path)}], value_dtype="bfloat16")
    engine = VASEngine(settings, tmp_path)
    try:
        engine.load()
        loaded = engine.backends["v"]
        assert isinstance(loaded, TorchBackend)
        assert next(loaded.model.parameters()).dtype == torch.bfloat16
    finally:
        asyncio.run(engine.close())
