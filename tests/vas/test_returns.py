"""TD(lambda) returns by the GAE recursion, on cases with known answers."""

from __future__ import annotations

import torch

from reasoning.vas.training import Sample, TrainConfig, shaped_rewards, td_lambda_returns


def test_lambda_one_gives_monte_carlo_returns() -> None:
    values = torch.tensor([[0.3, -0.2, 0.5, 0.0], [0.1, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    ret = td_lambda_returns(values, mask, torch.tensor([2.0, -1.0]), gamma=1.0, lam=1.0)
    assert torch.allclose(ret, torch.tensor([[2.0, 2, 2, 2], [-1, -1, 0, 0]]))


def test_lambda_zero_bootstraps_from_next_value() -> None:
    values = torch.tensor([[0.3, -0.2, 0.5]])
    ret = td_lambda_returns(values, torch.ones(1, 3), torch.tensor([1.5]), gamma=0.9, lam=0.0)
    assert torch.allclose(ret, torch.tensor([[0.9 * -0.2, 0.9 * 0.5, 1.5]]))


def test_intermediate_lambda_matches_direct_sum() -> None:
    v = [0.2, -0.1, 0.4]
    gamma, lam, reward = 0.95, 0.5, 1.0
    ret = td_lambda_returns(torch.tensor([v]), torch.ones(1, 3), torch.tensor([reward]), gamma, lam)[0]
    deltas = [gamma * v[1] - v[0], gamma * v[2] - v[1], reward - v[2]]
    expected = [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, 3)) + v[t] for t in range(3)]
    assert torch.allclose(ret, torch.tensor(expected), atol=1e-6)


def test_reward_normalization_and_clipping() -> None:
    samples = [Sample("p", "r", x) for x in (0.0, 1.0, 2.0, 100.0)]
    shaped = shaped_rewards(samples, TrainConfig(normalize_rewards=True, clip_reward=1.0))
    assert max(shaped) == 1.0 and min(shaped) >= -1.0
    raw = shaped_rewards(samples, TrainConfig(normalize_rewards=False, clip_reward=None))
    assert raw == [0.0, 1.0, 2.0, 100.0]
