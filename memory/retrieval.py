"""Ranking retrieved candidates: cosine similarity, optional recency decay, MMR diversity, token budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from memory.store import Hit


def estimate_tokens(text: str) -> int:
    """A cheap, model-agnostic estimate (~4 characters per token in English); used for budgets and reports."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def recency_factor(ts: float, now: float, half_life_days: float) -> float:
    if half_life_days <= 0:
        return 1.0
    age_days = max(0.0, now - ts) / 86400.0
    return float(0.5 ** (age_days / half_life_days))


def score(
    hits: list[Hit], *, half_life_days: float, recency_weight: float, now: float | None = None
) -> list[float]:
    """Relevance blended with recency: (1-w)·cos + w·cos·decay (recency only reorders what is relevant)."""
    now = time.time() if now is None else now
    out: list[float] = []
    for hit in hits:
        decay = recency_factor(hit.item.ts, now, half_life_days)
        out.append((1.0 - recency_weight) * hit.similarity + recency_weight * hit.similarity * decay)
    return out


def mmr(hits: list[Hit], scores: list[float], k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: pick k indices trading relevance against similarity to those picked."""
    if k <= 0 or not hits:
        return []
    if lam >= 1.0 or len(hits) <= 1:
        return sorted(range(len(hits)), key=lambda i: -scores[i])[:k]
    emb = np.stack([h.embedding for h in hits])
    sims = emb @ emb.T
    chosen: list[int] = []
    remaining = list(range(len(hits)))
    while remaining and len(chosen) < k:
        best, best_value = remaining[0], -math.inf
        for i in remaining:
            redundancy = max((float(sims[i, j]) for j in chosen), default=0.0)
            value = lam * scores[i] - (1.0 - lam) * redundancy
            if value > best_value:
                best, best_value = i, value
        chosen.append(best)
        remaining.remove(best)
    return chosen


def fit_budget(texts: list[str], budget: int, cost: Callable[[str], int] = estimate_tokens) -> int:
    """How many of `texts` (in order) fit within `budget` tokens."""
    used = 0
    for n, text in enumerate(texts):
        used += cost(text)
        if used > budget:
            return n
    return len(texts)
