"""An in-process base model for token-level VAS: llama.cpp (llama-cpp-python) on a GGUF, by token id.

Servers that key top log-probabilities by decoded text cannot tell the end of text from a partial UTF-8
byte token (both read ""), so CJK and emoji cannot be steered through them. Here the base works on
token ids: the end is an end-of-generation id, and a candidate whose bytes stop inside a character is
completed by its greedy continuation, so every candidate is whole text. The candidate keeps its first
token's log-probability (the next-token distribution is the base's own, so beta 0 greedy decoding is
llama.cpp's greedy decoding byte for byte); the completing bytes are the most likely ones, not sampled. The ids of each candidate are kept, so the next step continues from the very tokens chosen
(no re-tokenization), and the KV cache of the longest shared prefix is reused across steps.

llama.cpp's context is not thread-safe: every call runs on the model's own single thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from reasoning.vas.backends import _common_len
from reasoning.vas.base_lm import Block, CallStats, Messages, TokenChoice, _top_k

T = TypeVar("T")
# Special tokens that end an answer where the model defines them (checked against its vocabulary).
_EOG_TEXTS = (b"<|im_end|>", b"<|endoftext|>", b"<|eot_id|>", b"<|end|>", b"</s>")
# A UTF-8 character is at most 4 bytes: a byte token never needs more than 3 more tokens to complete it.
_MAX_COMPLETION = 3


def _log_softmax(logits: Any) -> Any:
    shifted = logits - np.max(logits)
    return shifted - np.log(np.sum(np.exp(shifted)))


class LlamaCppModel:
    """One loaded GGUF shared by the requests' `LlamaCppLM`s, serialised on its own thread."""

    def __init__(self, path: Path, n_ctx: int = 4096, n_threads: int = 1) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.path = Path(path)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        self.n_vocab = int(self.llm.n_vocab())
        self.eog = {int(self.llm.token_eos())}
        for text in _EOG_TEXTS:
            ids = self.llm.tokenize(text, add_bos=False, special=True)
            if len(ids) == 1:
                self.eog.add(int(ids[0]))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vas-base")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def render(self, messages: Messages) -> str:
        """The chat in the GGUF's own template, ready for the assistant's answer."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError(f"{self.path.name} has no chat template: set vas.prompt_template")

        def token(key: str) -> str:
            tid = meta.get(key)
            return self.llm.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid else ""

        formatter = Jinja2ChatFormatter(template, eos_token=token("tokenizer.ggml.eos_token_id"),
                                        bos_token=token("tokenizer.ggml.bos_token_id"), add_generation_prompt=True)
        return str(formatter(messages=messages).prompt)  # type: ignore[arg-type]

    def tokenize(self, text: str, special: bool) -> list[int]:
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)]

    def logprobs_after(self, ids: list[int]) -> Any:
        """Log-probabilities of the next token after `ids` (blocking), re-using the cached shared prefix."""
        held = [int(t) for t in self.llm._input_ids]
        keep = min(_common_len(held, ids), len(ids) - 1)  # at least one token runs, to give its logits
        self.llm.n_tokens = keep  # eval() drops the KV cache from here on
        self.llm.eval(ids[keep:])
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,))
        return _log_softmax(np.array(logits, dtype=np.float64))

    def piece(self, token: int) -> bytes:
        return bytes(self.llm.detokenize([token]))

    def complete(self, ids: list[int], max_tokens: int, temperature: float, top_p: float, seed: int) -> dict[str, Any]:
        """Plain sampling by llama.cpp's own sampler from `ids` (its prefix cache re-used)."""
        out: dict[str, Any] = self.llm.create_completion(  # type: ignore[assignment]
            prompt=ids, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
            top_k=0, min_p=0.0, repeat_penalty=1.0,
        )
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class LlamaCppLM:
    """The `BaseLM` of one answer over a shared `LlamaCppModel`."""

    model: LlamaCppModel
    render: Callable[[Messages], str]
    stats: CallStats = field(default_factory=CallStats)
    _prompt: tuple[str, list[int]] | None = None
    _known: dict[str, list[int]] = field(default_factory=dict)  # answer text -> the ids that spelt it

    def _ids(self, messages: Messages, partial: str) -> list[int]:
        text = self.render(messages)
        if self._prompt is None or self._prompt[0] != text:
            self._prompt = (text, self.model.tokenize(text, special=True))
            self.stats.prompt_tokens = len(self._prompt[1])
        answer = self._known.get(partial)
        if answer is None:
            answer = self.model.tokenize(partial, special=False) if partial else []
        return self._prompt[1] + answer

    async def top_tokens(self, messages: Messages, partial: str, k: int) -> list[TokenChoice]:
        ids = self._ids(messages, partial)
        answer_ids = ids[len(self._prompt[1]) :] if self._prompt else []
        started = time.perf_counter()
        try:
            found = await self.model.call(self._top, ids, k)
        finally:
            self.stats.calls += 1
            self.stats.seconds += time.perf_counter() - started
        self.stats.tokens += 1
        out = []
        for text, logprob, cand_ids in found:
            if text is not None:
                self._known[partial + text] = answer_ids + cand_ids
            out.append(TokenChoice(text or "", logprob))  # None: an end-of-generation id, unambiguous
        return _top_k(out, k)

    def _top(self, ids: list[int], k: int) -> list[tuple[str | None, float, list[int]]]:
        logprobs = self.model.logprobs_after(ids)
        # More than k looked at: control tokens VAS never emits and broken byte runs are skipped.
        width = min(max(4 * k, k + 8), len(logprobs))
        # A partial selection first: sorting the whole vocabulary (49k for SmolLM2) each step costs more
        # than the rest of the step outside the forward pass.
        top = np.argpartition(-logprobs, width - 1)[:width]
        order = top[np.argsort(-logprobs[top], kind="stable")]
        out: list[tuple[str | None, float, list[int]]] = []
        for raw in order:
            token = int(raw)
            if token in self.model.eog:
                out.append((None, float(logprobs[token]), [token]))
            else:
                whole = self._whole(ids, token)
                if whole is not None:
                    out.append((whole[0], float(logprobs[token]), whole[1]))
            if len(out) == k:
                break
        return out

    def _whole(self, ids: list[int], token: int) -> tuple[str, list[int]] | None:
        """The text of `token` completed to whole characters by its greedy continuation (None: not text)."""
        data, cand = self.model.piece(token), [token]
        if not data:
            return None  # a control token
        for _ in range(_MAX_COMPLETION + 1):
            try:
                return data.decode("utf-8"), cand
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data" or len(cand) > _MAX_COMPLETION:
                    return None
            logprobs = self.model.logprobs_after(ids + cand)
            nxt = int(np.argmax(logprobs))
            if nxt in self.model.eog:
                return None
            data += self.model.piece(nxt)
            cand.append(nxt)
        return None

    async def sample(
        self, messages: Messages, partial: str, max_tokens: int, temperature: float, top_p: float, seed: int
    ) -> Block:
        ids = self._ids(messages, partial)
        started = time.perf_counter()
        try:
            data = await self.model.call(self.model.complete, ids, max_tokens, temperature, top_p, seed)
        finally:
            self.stats.calls += 1
            self.stats.seconds += time.perf_counter() - started
        choice = data["choices"][0]
        used = int((data.get("usage") or {}).get("completion_tokens") or 0)
        self.stats.tokens += used
        return Block(choice.get("text") or "", choice.get("finish_reason") == "stop", used)
