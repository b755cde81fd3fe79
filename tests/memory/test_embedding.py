"""The packaged all-MiniLM-L6-v2 embedder: shape, normalization, semantic order, cache."""

from __future__ import annotations

import numpy as np

from memory.embedding import SentenceTransformerEmbedder


async def test_embeds_normalized_rows_with_semantic_order(embedder: SentenceTransformerEmbedder) -> None:
    vectors = await embedder.embed(
        ["I love hiking in the mountains", "Mountain trekking is my hobby", "Tax forms"]
    )
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2


async def test_query_cache_hits_and_empty_batch(embedder: SentenceTransformerEmbedder) -> None:
    before = embedder.cache_stats["hits"]
    first = await embedder.embed(["a repeated query about cats"])
    second = await embedder.embed(["a repeated query about cats"])
    assert np.array_equal(first, second)
    assert embedder.cache_stats["hits"] >= before + 1
    empty = await embedder.embed([])
    assert empty.shape == (0, embedder.dim)
