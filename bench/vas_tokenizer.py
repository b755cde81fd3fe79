"""What differing base/value tokenizers cost: replay recorded token-level VAS steps through four scoring paths.

The value model scores text, so each step retokenizes prefix + candidate (the shipped torch session keeps
a KV cache of the shared token prefix and re-runs what the new tokenization changed). Replayed on the
same recorded steps (same prefixes, same top-k candidates):

- `text+cache`: the shipped `TorchSession.score` (reference);
- `text, no cache`: every candidate text run from scratch (the cost with no prefix reuse at all);
- `token ids`: the base's own tokens passed through as ids, no retokenization (possible only when the
  value model shares the base tokenizer, as SmolLM2 value models on a SmolLM2 base do);
- `other tokenizer`: the same value weights behind a different tokenizer, SmolLM2's BPE with only the
  first half of its merges (so words split into more, different pieces than the base produced).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from bench.vas_data import RowCache
from reasoning.vas.backends import TorchBackend, TorchSession
from reasoning.vas.decoding import centre
from reasoning.vas.value_model import render_prompt


def variant_tokenizer_dir(model_dir: Path, out: Path, keep: float = 0.5) -> Path:
    """model_dir's weights (linked) with a tokenizer that keeps only the first `keep` share of BPE merges."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        dest = out / f.name
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        if f.name == "tokenizer.json":
            spec = json.loads(f.read_text())
            merges = spec["model"]["merges"]
            spec["model"]["merges"] = merges[: int(len(merges) * keep)]
            dest.write_text(json.dumps(spec))
        elif f.suffix == ".safetensors":
            dest.symlink_to(f.resolve())
        elif f.is_file():
            shutil.copy(f, dest)
    return out


def _dist(logprobs: list[float], values: list[float], beta: float) -> list[float]:
    scores = [lp + beta * v for lp, v in zip(logprobs, centre(values), strict=True)]
    peak = max(scores)
    w = [math.exp(s - peak) for s in scores]
    total = sum(w)
    return [x / total for x in w]


def tokenizer_section(cache: RowCache, key: str, model_dir: Path, tok: Any, beta: float, n_prompts: int,
                      run: Path) -> dict[str, Any]:
    answers = [a for a in cache.get(key) if "trace" in a][:n_prompts]
    if not answers:
        return {"error": f"no recorded trace under {key}"}
    ref_backend = TorchBackend(model_dir, "ref")
    other = TorchBackend(variant_tokenizer_dir(model_dir, run / "tok-variant"), "other")
    vtok = ref_backend.tokenizer
    paths = ["text+cache", "text, no cache", "token ids", "other tokenizer"]
    per: dict[str, dict[str, Any]] = {p: {"seconds": 0.0, "tokens_run": 0, "tokens_rerun": 0, "values": []} for p in paths}
    steps_total, multi_token_cands, cands_total = 0, 0, 0
    for ans in answers:
        prompt = render_prompt(tok, [{"role": "user", "content": ans["prompt"]}])
        trace = ans["trace"]
        sessions = {"text+cache": ref_backend.session(), "token ids": ref_backend.session(), "other tokenizer": other.session()}
        prefix_ids = vtok(prompt, add_special_tokens=False).input_ids
        for t, step in enumerate(trace):
            conts = ["" if c in {"", "<|im_end|>"} else c for c, _ in step["cands"]]
            if len(conts) < 2:
                continue
            steps_total += 1
            prefix = prompt + step["partial"]
            for name in ("text+cache", "other tokenizer"):
                sess: TorchSession = sessions[name]
                before = time.perf_counter()
                per[name]["values"].append(sess._score(prefix, conts))
                per[name]["seconds"] += time.perf_counter() - before
            before = time.perf_counter()
            # The uncached path is ~7x slower: a quarter of the steps show its cost and its agreement.
            per["text, no cache"]["values"].append(
                ref_backend.score_texts([prefix + c for c in conts]) if steps_total % 4 == 1 else None)
            per["text, no cache"]["seconds"] += time.perf_counter() - before
            if per["text, no cache"]["values"][-1] is not None:
                per["text, no cache"]["measured"] = per["text, no cache"].get("measured", 0) + 1
                per["text, no cache"]["tokens_run"] += sum(
                    len(vtok(prefix + c, add_special_tokens=False).input_ids) for c in conts)
            # Each candidate's own ids, appended to the base's token sequence as it was produced.
            cand_ids = [vtok(c, add_special_tokens=False).input_ids if c else [] for c in conts]
            multi_token_cands += sum(1 for ids in cand_ids if len(ids) > 1)
            cands_total += len(conts)
            before = time.perf_counter()
            per["token ids"]["values"].append(sessions["token ids"].score_ids([prefix_ids + ids for ids in cand_ids]))
            per["token ids"]["seconds"] += time.perf_counter() - before
            if t + 1 < len(trace):
                chosen = trace[t + 1]["partial"][len(step["partial"]):]
                prefix_ids = prefix_ids + vtok(chosen, add_special_tokens=False).input_ids
        for name, sess in sessions.items():
            per[name]["tokens_run"] += sess.stats.tokens_run
            per[name]["tokens_rerun"] += sess.stats.tokens_rerun
    text_lens = [(len(vtok(ans["text"], add_special_tokens=False).input_ids),
                  len(other.tokenizer(ans["text"], add_special_tokens=False).input_ids)) for ans in answers]
    ref_vals = per["text+cache"]["values"]
    logprobs = [[lp for _, lp in step["cands"]] for ans in answers for step in ans["trace"] if len(step["cands"]) >= 2]
    rows = []
    for name in paths:
        measured = [(v, r, lp) for v, r, lp in zip(per[name]["values"], ref_vals, logprobs, strict=True) if v is not None]
        n_steps = per[name].get("measured", steps_total)
        d_abs = [abs(a - b) for v, r, _ in measured for a, b in zip(centre(v), centre(r), strict=True)]
        tvs, flips = [], 0
        for v, r, lp in measured:
            p, q = _dist(lp, v, beta), _dist(lp, r, beta)
            tvs.append(0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True)))
            flips += max(range(len(p)), key=p.__getitem__) != max(range(len(q)), key=q.__getitem__)
        rows.append({
            "path": name, "steps_measured": n_steps, "ms_per_step": 1000 * per[name]["seconds"] / n_steps,
            "value_tokens_per_step": per[name]["tokens_run"] / n_steps,
            "rerun_tokens_per_step": per[name]["tokens_rerun"] / n_steps,
            "max_abs_centred_value_diff": max(d_abs), "mean_abs_centred_value_diff": sum(d_abs) / len(d_abs),
            "mean_tv_distance": sum(tvs) / len(tvs), "max_tv_distance": max(tvs),
            "argmax_changed_share": flips / len(tvs),
        })
    return {"beta": beta, "answers": len(answers), "steps": steps_total, "candidates": cands_total,
            "candidates_not_one_value_token": multi_token_cands,
            "answer_tokens_value_vs_other_tokenizer": [sum(a for a, _ in text_lens), sum(b for _, b in text_lens)],
            "rows": rows}
