"""VAS settings (composed into Rapport's one settings object by the proxy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator


class ValueModelEntry(BaseModel):
    """One value model: an exported directory run in-process, or a vLLM pooling server serving it."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    backend: Literal["torch", "vllm"] = "torch"
    # torch: the exported directory (`rapport values train` writes OUT/model). vllm: optional, for the
    # tokenizer/chat template of the value model (else fetched from nothing: the base prompt is reused).
    path: Path | None = None
    # vllm: the server's base URL (http://host:port, without /v1) and the model name it serves.
    url: str | None = None
    served_name: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ValueModelEntry:
        if self.backend == "torch" and self.path is None:
            raise ValueError(f"value model {self.name!r}: the torch backend needs 'path'")
        if self.backend == "vllm" and not self.url:
            raise ValueError(f"value model {self.name!r}: the vllm backend needs 'url'")
        return self


class VASSettings(BaseModel):
    enabled_by_default: bool = False
    value_models: list[ValueModelEntry] = Field(default_factory=list)
    # Weights used when neither the request nor the user's profile names any (name -> weight).
    default_weights: dict[str, float] = Field(default_factory=dict)
    beta: float = Field(default=1.0, ge=0.0, le=1000.0)
    mode: Literal["token", "block", "best_of_n"] = "token"
    top_k: int = Field(default=20, ge=1, le=100)
    max_tokens: int = Field(default=256, ge=1, le=4096)
    block_tokens: int = Field(default=8, ge=1, le=512)
    block_candidates: int = Field(default=4, ge=1, le=64)
    best_of: int = Field(default=4, ge=1, le=64)
    # How VAS continues a partial answer: `completions` renders the chat with a template and calls
    # /completions (llama.cpp, vLLM, TGI...); `chat_prefill` sends the partial answer as a final assistant
    # message with continue_final_message (vLLM's chat API); `llama_cpp` runs the base in-process on a
    # GGUF by token id (end of text and byte tokens told apart: CJK and emoji work), which must be the
    # model the request's upstream serves: VAS then makes no upstream call for steered answers.
    base_api: Literal["completions", "chat_prefill", "llama_cpp"] = "completions"
    base_gguf: Path | None = None  # llama_cpp: the GGUF file; None: the packaged SmolLM2
    base_n_ctx: int = Field(default=4096, ge=256, le=131072)
    base_threads: int = Field(default=1, ge=1, le=256)
    # Tokenizer directory whose chat template renders prompts for `completions`; None: the first torch
    # value model's (right when it was trained from the base model's own backbone, as by default).
    prompt_template: Path | None = None
    # Extra sampling fields sent with every base-model call (e.g. {"top_k": 0, "min_p": 0} for llama.cpp).
    upstream_extra: dict[str, Any] = Field(default_factory=dict)
    # Extra fields for the top-k log-probability calls of `completions` (drop for APIs that reject them).
    logprob_extra: dict[str, Any] = Field(default_factory=lambda: {"min_tokens": 1})
    torch_threads: int = Field(default=1, ge=1, le=256)
    # Torch value models' weights. bfloat16 reads half the bytes per value pass (about half the CPU here: 32-39
    # ms against 65-75 ms at k=10 on one core, bench/vas_cost_llama.py) but moves values by up to ~9% of their
    # spread, so it is an opt-in. onednn pre-packs float32 weights for oneDNN on x86: the same values for about
    # a fifth less CPU.
    value_dtype: Literal["float32", "bfloat16"] = "float32"
    value_onednn: bool = False
    # Operator bounds on one request (not request fields). A request option above a cap is a 400 naming
    # it; a request that reaches a budget mid-way stops steering and finishes plainly (one plain
    # completion of the same prefix, counted within max_upstream_calls), and says so in `rapport`.
    max_upstream_calls: int = Field(default=512, ge=2, le=100_000)
    max_value_passes: int = Field(default=512, ge=1, le=100_000)  # one value model scoring one step
    deadline_s: float = Field(default=60.0, gt=0.0, le=3600.0)  # wall clock for the steered part
    max_top_k: int = Field(default=50, ge=1, le=100)
    max_best_of: int = Field(default=8, ge=1, le=64)
    max_block_candidates: int = Field(default=8, ge=1, le=64)
    min_block_tokens: int = Field(default=2, ge=1, le=512)
    # Threads of the executor that value passes run on (their own, so they never starve the default one).
    value_threads: int = Field(default=2, ge=1, le=64)
    store_file: str = "vas.sqlite3"
    # Where `rapport values train` keeps the dequantized default backbone; None: DATA_DIR/vas/backbones.
    backbone_cache: Path | None = None
