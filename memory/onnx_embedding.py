"""The same sentence-transformers model, run by ONNX Runtime (optionally int8-quantized).

On 2 CPU cores all-MiniLM-L6-v2 is compute-bound at roughly 300 short texts per second in fp32, which caps
memory ingest below that. ONNX Runtime with dynamic int8 weights (per channel) encodes about twice as fast;
the cost in embedding quality is measured in bench/memory.py and stated in the README. The model is exported
from its torch weights once and cached as an .onnx file keyed by the model's files, so later starts need
neither the export nor torch's copy of the weights in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from memory.embedding import CachedEmbedder, Vectors, resolve_model

log = logging.getLogger("rapport.memory.onnx")

_POOLINGS = ("mean", "cls")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rapport" / "onnx"


def model_fingerprint(model_dir: Path) -> str:
    """A digest of the model folder's file names, sizes and mtimes: a changed model gets a fresh export."""
    digest = hashlib.sha256(str(model_dir.resolve()).encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_dir)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:20]


def read_pooling(model_dir: Path) -> str:
    """The pooling the sentence-transformers config asks for; other module stacks are refused."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    extra = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if extra:
        raise ValueError(f"the onnx embedding backend supports Transformer+Pooling models, not {extra}")
    pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    config = json.loads((model_dir / pooling_dir / "config.json").read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ValueError(f"unsupported pooling in {model_dir / pooling_dir}: {config}")


def export_onnx(model_dir: Path, target: Path, *, quantize: bool) -> None:
    """Export the transformer to ONNX (dynamic batch and length), then optionally quantize its weights."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    first: Any = st[0]
    transformer = first.auto_model.eval()
    tokenizer: Any = first.tokenizer
    names = list(tokenizer.model_input_names)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *inputs: Any) -> Any:
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    sample = tokenizer(["an example input", "a second, longer example input"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "hidden"]}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    fp32 = tmp.with_suffix(".fp32.onnx") if quantize else tmp
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapped(),
            tuple(sample[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel weights: per-tensor scales cost far more accuracy on this model (measured).
        quantize_dynamic(str(fp32), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
        fp32.unlink(missing_ok=True)
    tmp.replace(target)  # atomic: a concurrent or killed export never leaves a half-written model


class OnnxEmbedder(CachedEmbedder):
    def __init__(
        self,
        model: str | Path | None = None,
        *,
        quantize: bool = True,
        batch_size: int = 64,
        cache_size: int = 4096,
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, cache_size=cache_size)
        self.model_name = resolve_model(model)
        self.quantize = quantize
        self._threads = threads
        self._cache_dir = cache_dir or default_cache_dir()
        self._session: Any = None
        self._tokenizer: Any = None
        self._pooling = "mean"
        self._max_length = 256
        self.onnx_path: Path | None = None

    def _unload(self) -> None:
        self._session = None

    def _load(self) -> int:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        model_dir = Path(self.model_name)
        if not model_dir.is_dir():
            raise ValueError(f"the onnx embedding backend needs a local model folder, got {self.model_name!r}")
        self._pooling = read_pooling(model_dir)
        suffix = "int8" if self.quantize else "fp32"
        path = self._cache_dir / f"{model_dir.name}-{model_fingerprint(model_dir)}-{suffix}.onnx"
        if not path.exists():
            log.info("exporting %s to ONNX (%s) at %s", model_dir, suffix, path)
            export_onnx(model_dir, path, quantize=self.quantize)
        self.onnx_path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads is not None:
            options.intra_op_num_threads = self._threads
        # Idle intra-op threads would otherwise spin, taking CPU from the store writes running beside them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.exists():
            self._max_length = int(json.loads(st_config.read_text()).get("max_seq_length", 256))
        return int(self._session.get_outputs()[0].shape[-1])

    def _encode(self, texts: list[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Length-sorted batches keep padding (wasted compute) small.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self._batch_size):
            idx = order[start : start + self._batch_size]
            encoded = self._tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="np",
            )
            feeds = {name: np.asarray(encoded[name], dtype=np.int64) for name in self._input_names}
            hidden = self._session.run(None, feeds)[0]
            if self._pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = encoded["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[idx] = pooled / np.maximum(norms, 1e-12)
        return out
