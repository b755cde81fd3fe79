"""The VAS engine: value-model backends, per-user weights and per-request options, resolved into a run.

Kept free of the proxy so that the CLI, benches and tests drive the same code; the proxy's VAS plugin maps
`VASOptionError` to an OpenAI-style 400 and calls `run` with a base-model client bound to the upstream.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reasoning.vas.answer import normalise_stop
from reasoning.vas.backends import TorchBackend, ValueBackend, ValueBackendDown, VLLMBackend
from reasoning.vas.base_lm import BaseLM, Messages
from reasoning.vas.bounds import Limits
from reasoning.vas.config import VASSettings
from reasoning.vas.decoding import ComposedValue, DecodeParams, DecodeResult, Emit, decode
from reasoning.vas.llama_base import LlamaCppModel
from reasoning.vas.store import ProfileStore
from reasoning.vas.value_model import packaged_gguf, render_prompt

log = logging.getLogger("rapport.vas")


class VASOptionError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class VASRequest(BaseModel):
    """`extra_body={"rapport": {"vas": {...}}}`; every field falls back to the profile, then settings."""

    model_config = ConfigDict(extra="forbid")

    beta: float | None = Field(default=None, ge=0.0, le=1000.0)
    weights: dict[str, float] | None = None
    mode: Literal["token", "block", "best_of_n"] | None = None
    top_k: int | None = Field(default=None, ge=1, le=100)
    block_tokens: int | None = Field(default=None, ge=1, le=512)
    block_candidates: int | None = Field(default=None, ge=1, le=64)
    block_select: Literal["softmax", "argmax"] | None = None
    best_of: int | None = Field(default=None, ge=1, le=64)
    seed: int | None = None


def parse_request(raw: bool | dict[str, Any] | None) -> VASRequest:
    if raw is None or isinstance(raw, bool):
        return VASRequest()
    try:
        return VASRequest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise VASOptionError(f"Invalid rapport.vas option {loc!r}: {err['msg']}", f"rapport.vas.{loc}") from exc


def _num(value: Any, default: float) -> float:
    return default if value is None else float(value)


@dataclass
class Plan:
    params: DecodeParams
    weights: dict[str, float]
    weights_from: str


class VASEngine:
    def __init__(self, settings: VASSettings, data_dir: Path, store: ProfileStore | None = None) -> None:
        self.settings = settings
        # The server hands in the store on its databases; tools and tests get the data dir's file.
        self.store = store if store is not None else ProfileStore(data_dir / settings.store_file)
        self.backends: dict[str, ValueBackend] = {}
        self.tokenizers: dict[str, Any] = {}
        self.template_tokenizer: Any = None
        self.load_errors: dict[str, str] = {}
        # Value passes run here, not on the default executor (created on load, shut down on close).
        self.value_executor: ThreadPoolExecutor | None = None
        self.base_model: LlamaCppModel | None = None  # base_api llama_cpp: the in-process base
        self.base_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every configured value model (blocking; run it in a thread). Failures are kept, not raised."""
        from transformers import AutoTokenizer

        if self.value_executor is None:
            self.value_executor = ThreadPoolExecutor(self.settings.value_threads, thread_name_prefix="vas-value")
        for entry in self.settings.value_models:
            try:
                backend: ValueBackend
                if entry.backend == "torch":
                    assert entry.path is not None
                    torch_backend = TorchBackend(entry.path, entry.name, self.settings.torch_threads,
                                                 executor=self.value_executor, dtype=self.settings.value_dtype,
                                                 onednn=self.settings.value_onednn)
                    backend, tokenizer = torch_backend, torch_backend.tokenizer
                else:
                    assert entry.url is not None
                    backend = VLLMBackend(entry.url, entry.served_name or entry.name, entry.name)
                    tokenizer = AutoTokenizer.from_pretrained(str(entry.path)) if entry.path else None
                self.backends[entry.name] = backend
                self.tokenizers[entry.name] = tokenizer
            except Exception as exc:
                log.exception("value model %s failed to load", entry.name)
                self.load_errors[entry.name] = f"{exc.__class__.__name__}: {exc}"[:300]
        if self.settings.prompt_template is not None:
            self.template_tokenizer = AutoTokenizer.from_pretrained(str(self.settings.prompt_template))
        else:
            self.template_tokenizer = next((t for t in self.tokenizers.values() if t is not None), None)
        if self.settings.base_api == "llama_cpp":
            try:
                gguf = self.settings.base_gguf or packaged_gguf()
                self.base_model = LlamaCppModel(gguf, self.settings.base_n_ctx, self.settings.base_threads)
            except Exception as exc:
                log.exception("the in-process base model failed to load")
                self.base_error = f"{exc.__class__.__name__}: {exc}"[:300]

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()
        if self.value_executor is not None:
            self.value_executor.shutdown(wait=False, cancel_futures=True)
        if self.base_model is not None:
            self.base_model.close()
        self.store.close()

    async def ready(self) -> tuple[bool, str]:
        if self.load_errors:
            return False, "value models failed to load: " + ", ".join(self.load_errors)
        results = await asyncio.gather(*(b.ready() for b in self.backends.values()))
        down = [msg for ok, msg in results if not ok]
        return (not down), ("; ".join(down) if down else f"{len(self.backends)} value model(s) ready")

    # -- per request ----------------------------------------------------------------------------------

    def render(self, messages: Messages) -> str:
        if self.template_tokenizer is None and self.base_model is not None:
            return self.base_model.render(messages)  # the GGUF's own chat template
        if self.template_tokenizer is None:
            raise RuntimeError("no chat template for the base model: set vas.prompt_template")
        return render_prompt(self.template_tokenizer, messages)

    def plan(self, req: VASRequest, tenant: str, user: str | None, body: dict[str, Any]) -> Plan:
        s = self.settings
        profile = self.store.get(tenant, user) if user is not None else None
        if req.weights is not None:
            weights, source = req.weights, "request"
        elif profile is not None and profile.weights:
            weights, source = profile.weights, "profile"
        elif s.default_weights:
            weights, source = s.default_weights, "settings"
        else:
            weights, source = {name: 1.0 for name in self.backends}, "all"
        unknown = sorted(set(weights) - {e.name for e in s.value_models})
        if unknown:
            raise VASOptionError(f"Unknown value model(s): {', '.join(unknown)}", "rapport.vas.weights")
        beta = req.beta if req.beta is not None else (profile.beta if profile and profile.beta is not None else s.beta)
        self.check_caps(req)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or s.max_tokens
        try:
            params = DecodeParams(
                mode=req.mode or s.mode,
                beta=beta,
                top_k=req.top_k or s.top_k,
                temperature=_num(body.get("temperature"), 1.0) or 1e-4,
                top_p=_num(body.get("top_p"), 1.0),
                max_tokens=min(int(max_tokens), s.max_tokens),
                seed=req.seed if req.seed is not None else body.get("seed"),
                block_tokens=req.block_tokens or s.block_tokens,
                block_candidates=req.block_candidates or s.block_candidates,
                block_select=req.block_select or "softmax",
                best_of=req.best_of or s.best_of,
                stop=normalise_stop(body.get("stop")),
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            raise VASOptionError(f"Invalid sampling option for VAS: {err['msg']}", str(err["loc"][0])) from exc
        return Plan(params, {k: v for k, v in weights.items() if v != 0.0}, source)

    def check_caps(self, req: VASRequest) -> None:
        """The operator's caps on what a request may ask (400 naming the option, never a silent clamp)."""
        s = self.settings
        over = [
            ("top_k", req.top_k, s.max_top_k),
            ("best_of", req.best_of, min(s.max_best_of, s.max_upstream_calls)),
            # A block step keeps one call in reserve for the plain finish.
            ("block_candidates", req.block_candidates, min(s.max_block_candidates, s.max_upstream_calls - 1)),
        ]
        for name, value, cap in over:
            if value is not None and value > cap:
                raise VASOptionError(f"rapport.vas.{name}={value} is above this server's cap of {cap}",
                                     f"rapport.vas.{name}")
        if req.block_tokens is not None and req.block_tokens < s.min_block_tokens:
            raise VASOptionError(
                f"rapport.vas.block_tokens={req.block_tokens} is below this server's minimum of {s.min_block_tokens}",
                "rapport.vas.block_tokens",
            )

    def limits(self) -> Limits:
        s = self.settings
        return Limits(s.max_upstream_calls, s.max_value_passes, s.deadline_s)

    def count_prompt_tokens(self, messages: Messages) -> int | None:
        """The prompt's tokens by the template tokenizer, for upstreams that report no usage."""
        if self.template_tokenizer is None:
            return None
        text = render_prompt(self.template_tokenizer, messages)
        return len(self.template_tokenizer(text, add_special_tokens=False).input_ids)

    def compose(self, weights: dict[str, float], messages: Messages) -> ComposedValue | None:
        parts = []
        for name, weight in weights.items():
            backend = self.backends.get(name)
            if backend is None:
                raise ValueBackendDown(f"value model {name} is not loaded: {self.load_errors.get(name, 'unknown')}")
            tokenizer = self.tokenizers.get(name) or self.template_tokenizer
            parts.append((weight, backend.session(), render_prompt(tokenizer, messages)))
        return ComposedValue(parts) if parts else None

    async def run(self, base: BaseLM, messages: Messages, plan: Plan, emit: Emit | None = None) -> DecodeResult:
        value = self.compose(plan.weights, messages) if plan.params.beta > 0 else None
        try:
            return await decode(base, messages, value, plan.params, emit, self.limits())
        finally:
            if value is not None:
                value.close()
