"""Token-level VAS against the real SmolLM2 upstream (llama.cpp) with a value model trained on its samples."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from scipy.stats import chisquare, wilcoxon

from reasoning.vas.backends import TorchBackend
from reasoning.vas.base_lm import CompletionsLM, httpx_post
from reasoning.vas.decoding import ComposedValue, DecodeParams, decode
from reasoning.vas.rewards import SentimentReward
from reasoning.vas.value_model import render_prompt
from tests.vas.conftest import Trained
from tests.vas.data import HELD_OUT_PROMPTS

# Session fixtures sample and train on 2 shared cores: their set-up can take many minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]
PROMPT = [{"role": "user", "content": "Write one word that describes the sea."}]


@pytest.fixture()
async def lm(smollm2_url: str, trained: Trained) -> AsyncIterator[CompletionsLM]:
    backend = TorchBackend(trained.model_dir)
    post, client = httpx_post(smollm2_url)
    # Plain sampling below uses the same nucleus as VAS: top 20 tokens, no min_p, temperature 1.
    yield CompletionsLM(post, lambda m: render_prompt(backend.tokenizer, m), model="smollm2",
                        extra={"top_k": 20, "min_p": 0.0, "min_tokens": 1})
    await client.aclose()


async def _plain_first_tokens(lm: CompletionsLM, n: int) -> list[str]:
    out = []
    for seed in range(n):
        data = await lm.post("completions", {"prompt": lm.render(PROMPT), "max_tokens": 1, "temperature": 1.0,
                                             "top_p": 1.0, "top_k": 20, "min_p": 0.0, "min_tokens": 1, "repeat_penalty": 1.0,
                                             "seed": 10_000 + seed})
        out.append(data["choices"][0]["text"])
    return out


async def _vas_first_tokens(lm: CompletionsLM, n: int, temperature: float = 1.0) -> list[str]:
    out = []
    for seed in range(n):
        params = DecodeParams(beta=0.0, top_k=20, max_tokens=1, temperature=temperature, seed=seed)
        out.append((await decode(lm, PROMPT, None, params)).text)
    return out


def _chi2(observed: list[str], expected_from: list[str]) -> float:
    """p-value that `observed` follows the distribution of `expected_from` (rare tokens pooled)."""
    ref, obs = Counter(expected_from), Counter(observed)
    n_ref, n_obs = len(expected_from), len(observed)
    common = [t for t, c in ref.items() if c / n_ref * n_obs >= 5]
    f_obs = [obs[t] for t in common] + [n_obs - sum(obs[t] for t in common)]
    f_exp = [ref[t] / n_ref * n_obs for t in common] + [n_obs - sum(ref[t] / n_ref * n_obs for t in common)]
    if f_exp[-1] < 1e-9:
        f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    return float(chisquare(f_obs, f_exp).pvalue)


async def test_beta_zero_matches_plain_sampling(lm: CompletionsLM) -> None:
    n = 150
    plain = await _plain_first_tokens(lm, n)
    vas = await _vas_first_tokens(lm, n)
    assert len(set(plain)) >= 3  # a real distribution, not a greedy answer
    assert _chi2(vas, plain) > 0.001
    # The same test tells a different distribution apart (sharper sampling), so it can fail.
    sharp = await _vas_first_tokens(lm, n, temperature=0.3)
    assert _chi2(sharp, plain) < 0.001


async def test_beta_raises_mean_reward_of_held_out_answers(lm: CompletionsLM, trained: Trained) -> None:
    backend = TorchBackend(trained.model_dir)
    reward = SentimentReward()

    async def answers(beta: float) -> list[float]:
        scores = []
        for seed in range(2):
            for i, prompt in enumerate(HELD_OUT_PROMPTS):
                messages = [{"role": "user", "content": prompt}]
                value = ComposedValue([(1.0, backend.session(), render_prompt(backend.tokenizer, messages))])
                params = DecodeParams(beta=beta, top_k=10, max_tokens=20, seed=100 * seed + i)
                result = await decode(lm, messages, value, params)
                scores.append(reward.score(prompt, result.text))
        return scores

    # Paired by prompt and seed: the same random stream, only the value shift differs.
    base, steered = await answers(0.0), await answers(8.0)
    assert sum(steered) / len(steered) > sum(base) / len(base)
    diffs = [s - b for s, b in zip(steered, base, strict=True)]
    assert wilcoxon(diffs, alternative="greater", zero_method="zsplit").pvalue < 0.05


async def test_value_scores_with_cache_equal_full_recompute(trained: Trained) -> None:
    backend = TorchBackend(trained.model_dir)
    session = backend.session()
    prefix = render_prompt(backend.tokenizer, [{"role": "user", "content": "Hi"}]) + "Hello"
    rng = random.Random(0)
    for step in range(4):
        cands = [" there", "!", " world", "", "n't", " friend" * rng.randint(1, 2)]
        cached = await session.score(prefix, cands)
        full = await asyncio.to_thread(backend.score_texts, [prefix + c for c in cands])
        assert cached == pytest.approx(full, abs=1e-4)
        prefix += cands[step % 3]
    # "Hello" + "n't" re-tokenizes across the boundary: the cache is cropped and re-run, still exact.
    assert session.stats.calls == 4 and session.stats.tokens_run > 0
    # Ids passed through (a base sharing the value tokenizer) score the same as the text they spell.
    texts = [prefix + c for c in (" there", "!", "")]
    ids = [backend.tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    by_ids = await asyncio.to_thread(backend.session().score_ids, ids)
    assert by_ids == pytest.approx(await asyncio.to_thread(backend.score_texts, texts), abs=1e-4)
