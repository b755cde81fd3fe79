"""Token-level VAS on token ids: the in-process llama.cpp base on the packaged SmolLM2 GGUF.

Through llama.cpp's OpenAI server, the end of text and partial UTF-8 byte tokens all read "" (a CJK
character here is two or three byte tokens). On token ids they are told apart, so a CJK answer comes out
whole: greedy VAS at beta 0 gives exactly llama.cpp's own greedy answer, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from reasoning.vas.decoding import DecodeParams, decode
from reasoning.vas.llama_base import LlamaCppLM, LlamaCppModel
from reasoning.vas.value_model import packaged_gguf
from tests.support.upstream import ScriptedUpstream

pytestmark = pytest.mark.timeout(900)
# SmolLM2-135M's greedy answer to this starts with CJK characters and a full-width "！" (3 bytes each).
PROMPT = [{"role": "user", "content": "Translate 'hello' into Chinese."}]


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaCppModel]:
    loaded = LlamaCppModel(packaged_gguf(), n_ctx=1024, n_threads=1)
    yield loaded
    loaded.close()


def _plain_greedy(model: LlamaCppModel, max_tokens: int) -> str:
    ids = model.tokenize(model.render(PROMPT), special=True)
    return str(model.complete(ids, max_tokens, 0.0, 1.0, 0)["choices"][0]["text"])


async def test_greedy_vas_on_token_ids_is_llamas_greedy_byte_for_byte(model: LlamaCppModel) -> None:
    lm = LlamaCppLM(model, model.render)
    params = DecodeParams(beta=0.0, top_k=5, max_tokens=4, temperature=1e-4, seed=0)
    result = await decode(lm, PROMPT, None, params)
    plain = _plain_greedy(model, 24)
    assert any(ord(ch) > 0x2E80 for ch in result.text), result.text  # CJK / full-width text came out
    assert plain.startswith(result.text) and len(result.text) >= 3
    assert result.prompt_tokens == len(model.tokenize(model.render(PROMPT), special=True))
    assert result.steps == 4 and "ambiguous_empty_tokens" not in result.value


async def test_the_end_of_text_is_an_id_not_an_empty_string(model: LlamaCppModel) -> None:
    lm = LlamaCppLM(model, model.render)
    ids = model.tokenize(model.render(PROMPT), special=True)
    cands = await lm.top_tokens(PROMPT, "Hello!", 20)
    # Every candidate is whole text or the end; none is a byte fragment or a silent "".
    assert all(c.text or c.is_end for c in cands) and not any(c.ambiguous for c in cands)
    assert all("\ufffd" not in c.text for c in cands)
    assert len(ids) == lm.stats.prompt_tokens


def test_vas_through_rapport_with_the_in_process_base(
    make_rapport: Callable[..., Any], scripted_upstream: ScriptedUpstream, model: LlamaCppModel
) -> None:
    handle = make_rapport(plugins=("proxy.stages.vas_plugin:build",),
                          vas={"base_api": "llama_cpp", "base_n_ctx": 1024, "max_tokens": 16})
    client = openai.OpenAI(base_url=handle.base_url, api_key=handle.api_key, max_retries=0, timeout=600)
    request: dict[str, Any] = {"model": "test-model", "user": "alice", "messages": PROMPT, "max_tokens": 3,
                               "temperature": 0, "stream_options": {"include_usage": True},
                               "extra_body": {"rapport": {"vas": {"beta": 0, "top_k": 5}}}}
    chunks = list(client.chat.completions.create(stream=True, **request))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and _plain_greedy(model, 24).startswith(text) and any(ord(ch) > 0x2E80 for ch in text)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 10
    assert scripted_upstream.requests == []  # the in-process base answered: no upstream call
