"""Ranking retrieved candidates: cosine similarity fused with BM25, optional recency decay, MMR diversity,
token budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

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
    hits: list[Hit],
    *,
    half_life_days: float,
    recency_weight: float,
    now: float | None = None,
    relevance: list[float] | None = None,
) -> list[float]:
    """Relevance blended with recency: (1-w)·r + w·r·decay (recency only reorders what is relevant).

    r is each hit's cosine similarity, or `relevance` where given (fused with lexical scores, see `fuse`).
    """
    now = time.time() if now is None else now
    rel = relevance if relevance is not None else [hit.similarity for hit in hits]
    out: list[float] = []
    for hit, r in zip(hits, rel, strict=True):
        decay = recency_factor(hit.item.ts, now, half_life_days)
        out.append((1.0 - recency_weight) * r + recency_weight * r * decay)
    return out


def fuse(
    similarities: list[float],
    lexical: dict[int, float],
    *,
    method: str,
    weight: float,
    rrf_k: int,
) -> list[float]:
    """One relevance per candidate from its cosine similarity and (where it matched) its BM25 score.

    rrf: reciprocal-rank fusion (1/(rrf_k + rank) summed over the dense ranking and the lexical ranking,
    the lexical term scaled by `weight`), rescaled so the best candidate has the best candidate's cosine:
    MMR then weighs it against cosine redundancy on the scale it was tuned for.
    weighted: cosine + weight * BM25 / the best BM25 among the candidates.
    `lexical` maps a candidate's index to its BM25 score (higher is better); absent means no lexical match.
    """
    if not similarities:
        return []
    if method == "weighted":
        top = max(lexical.values(), default=0.0)
        return [s + (weight * lexical[i] / top if top > 0 and i in lexical else 0.0) for i, s in enumerate(similarities)]
    dense_rank = {i: r for r, i in enumerate(sorted(range(len(similarities)), key=lambda i: -similarities[i]))}
    lexical_rank = {i: r for r, i in enumerate(sorted(lexical, key=lambda i: -lexical[i]))}
    fused = [
        1.0 / (rrf_k + 1 + dense_rank[i]) + (weight / (rrf_k + 1 + lexical_rank[i]) if i in lexical_rank else 0.0)
        for i in range(len(similarities))
    ]
    scale = max(max(similarities), 1e-6) / max(fused)
    return [f * scale for f in fused]


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


def fetch_hits(store: Any, tenant: str, user: str, ids: list[str], vector: Any) -> list[Hit]:
    """Stored items by id as hits with their exact cosine to the query vector (lexical matches that the dense
    search did not return). Ids the store does not hold are left out; a store that cannot return its vectors
    gives none (lexical then only re-ranks the dense candidates)."""
    get_vectors = getattr(store, "get_vectors", None)
    if get_vectors is None or not ids:
        return []
    items = store.get(tenant, user, ids, None)
    vectors = get_vectors(tenant, user, [it.id for it in items])
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    out: list[Hit] = []
    for item in items:
        found = vectors.get(item.id)
        if found is not None:
            emb = np.asarray(found, dtype=np.float32)
            out.append(Hit(item, float(emb @ query), emb))
    return out
