"""Stage 3's retrieval: history entries ranked by feature-level similarity to the new input.

Each query feature is matched to its most similar feature of a history entry ("name: value" embeddings);
the entry's score is the weighted mean of those best matches. A query feature whose name falls in a
factor that moves this user's responses (high association) weighs more, so entries are found for sharing
what matters to this user rather than for sharing words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Hit:
    entry_id: int
    score: float


def query_weights(
    query_name_vecs: np.ndarray, centroids: np.ndarray, associations: list[float | None], threshold: float
) -> np.ndarray:
    weights = np.ones(len(query_name_vecs), dtype=np.float32)
    if len(centroids) == 0 or len(query_name_vecs) == 0:
        return weights
    sims = query_name_vecs @ centroids.T
    best = sims.argmax(axis=1)
    for i, j in enumerate(best):
        if 1.0 - float(sims[i, j]) <= threshold:
            weights[i] += float(associations[j] or 0.0)
    return weights


def feature_level(
    query_vecs: np.ndarray,
    weights: np.ndarray,
    feature_vecs: np.ndarray,
    feature_entries: list[int],
    top_k: int,
    allowed: set[int] | None = None,
) -> list[Hit]:
    if len(query_vecs) == 0 or len(feature_vecs) == 0 or top_k <= 0:
        return []
    entries = np.asarray(feature_entries)
    order = np.argsort(entries, kind="stable")
    entries, vecs = entries[order], feature_vecs[order]
    starts = np.flatnonzero(np.r_[True, entries[1:] != entries[:-1]])
    sims = query_vecs @ vecs.T  # (q, m)
    best = np.maximum.reduceat(sims, starts, axis=1)  # (q, entries)
    scores = (weights[:, None] * best).sum(axis=0) / float(weights.sum())
    ids = entries[starts]
    hits = [Hit(int(e), float(s)) for e, s in zip(ids, scores, strict=True) if allowed is None or int(e) in allowed]
    hits.sort(key=lambda h: (-h.score, h.entry_id))
    return hits[:top_k]


def text_level(query_vec: np.ndarray, entry_ids: list[int], input_vecs: np.ndarray, top_k: int) -> list[Hit]:
    if len(entry_ids) == 0 or top_k <= 0:
        return []
    scores = input_vecs @ query_vec
    hits = [Hit(e, float(s)) for e, s in zip(entry_ids, scores, strict=True)]
    hits.sort(key=lambda h: (-h.score, h.entry_id))
    return hits[:top_k]
