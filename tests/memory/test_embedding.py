"""The packaged all-MiniLM-L6-v2 embedder: shape, normalization, semantic order, cache."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np

from memory.embedding import SentenceTransformerEmbedder, SplitEmbedder, make_embedder
from memory.onnx_embedding import OnnxEmbedder


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


async def test_onnx_backends_match_torch_and_cache_the_export(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    texts = [
        "I am vegetarian and never eat fish",
        "What should I cook for dinner tonight?",
        "My flight to Lisbon leaves on Friday",
        "Recommend a thriller novel",
    ]
    reference = await embedder.embed(texts)
    for backend, floor in (("onnx", 0.9999), ("onnx-int8", 0.97)):
        onnx = make_embedder(backend=backend, cache_dir=tmp_path)  # type: ignore[arg-type]
        assert isinstance(onnx, OnnxEmbedder)
        vectors = await onnx.embed(texts)
        assert vectors.shape == reference.shape and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        cosines = np.sum(vectors * reference, axis=1)
        assert cosines.min() >= floor, (backend, cosines)
        # Same nearest neighbour for every text as the torch model.
        assert np.array_equal(
            np.argsort(-(vectors @ vectors.T), axis=1)[:, 1], np.argsort(-(reference @ reference.T), axis=1)[:, 1]
        )
        assert onnx.onnx_path is not None and onnx.onnx_path.parent == tmp_path
        exported_at = onnx.onnx_path.stat().st_mtime_ns
        onnx.close()
        again = make_embedder(backend=backend, cache_dir=tmp_path)  # type: ignore[arg-type]
        assert np.allclose(await again.embed(texts), vectors, atol=1e-6)
        assert isinstance(again, OnnxEmbedder) and again.onnx_path == onnx.onnx_path
        assert again.onnx_path.stat().st_mtime_ns == exported_at  # loaded from the cache, not exported again
        again.close()
    names = os.listdir(tmp_path)
    assert sum(n.endswith(".onnx") for n in names) == 2 and not [n for n in names if n.endswith(".tmp")]


async def test_concurrent_embeds_share_model_calls_and_get_their_own_rows(tmp_path: Path) -> None:
    # fp32 throughout: with bf16 a text's vector depends (slightly) on the size of the batch it landed in.
    model = SentenceTransformerEmbedder(cache_size=0, batch_size=16, bf16="off")
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(40)]
    alone = model.encode_sync(texts)
    before = model.encode_calls
    rows = await asyncio.gather(*(model.embed([t]) for t in texts))
    assert model.encode_calls - before <= 40 // 16 + 2  # merged batches, not one model call per caller
    assert np.allclose(np.concatenate(rows), alone, atol=1e-5)
    # Background (ingest) work is chunked and still returns rows in order.
    assert np.allclose(await model.embed_background(texts), alone, atol=1e-5)
    model.close()


def test_bf16_batches_stay_next_to_fp32_and_queries_stay_exact() -> None:
    texts = [f"I prefer {food} for dinner on day {i}." for i, food in enumerate(["rice", "pasta", "soup"] * 4)]
    fp32 = SentenceTransformerEmbedder(bf16="off", cache_size=0)
    bf16 = SentenceTransformerEmbedder(bf16="on", cache_size=0)
    try:
        reference = fp32.encode_sync(texts)
        batch = bf16.encode_sync(texts)  # 12 texts: a bf16 batch
        assert batch.dtype == np.float32
        cosines = (batch * reference).sum(axis=1)
        assert cosines.min() > 0.999
        assert not np.array_equal(batch, reference)  # bf16 really ran
        # A query-sized call is left in fp32: identical to the fp32 model.
        assert np.array_equal(bf16.encode_sync(texts[:1]), fp32.encode_sync(texts[:1]))
    finally:
        fp32.close()
        bf16.close()


async def test_split_embedder_queries_on_onnx_and_ingest_on_torch(tmp_path: Path) -> None:
    split = make_embedder(backend="torch", query_backend="onnx", cache_size=0, cache_dir=tmp_path)
    assert isinstance(split, SplitEmbedder)
    try:
        await split.warm()
        texts = [f"My favourite season is {s}, day {i}." for i, s in enumerate(["spring", "autumn"] * 5)]
        queries = await split.embed(texts)
        bulk = await split.embed_background(texts)
        assert split.query.encode_calls >= 1 and split.bulk.encode_calls >= 1
        assert isinstance(split.query, OnnxEmbedder) and isinstance(split.bulk, SentenceTransformerEmbedder)
        assert float((queries * bulk).sum(axis=1).min()) > 0.999  # one model, two runtimes
        assert split.dim == queries.shape[1]
    finally:
        split.close()
