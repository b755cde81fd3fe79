from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memory.embedding import SentenceTransformerEmbedder
from reasoning.rpm.config import RPMSettings
from reasoning.rpm.engine import RPMEngine
from reasoning.rpm.store import RPMStore
from tests.rpm.fakes import ScriptedLLM


@pytest.fixture(scope="session")
def embedder() -> Iterator[SentenceTransformerEmbedder]:
    emb = SentenceTransformerEmbedder()
    yield emb
    emb.close()


@pytest.fixture()
def llm() -> ScriptedLLM:
    return ScriptedLLM()


@pytest.fixture()
def make_engine(tmp_path: Path, embedder: SentenceTransformerEmbedder):
    engines: list[RPMEngine] = []

    def _make(llm: ScriptedLLM | None, **settings: object) -> RPMEngine:
        engine = RPMEngine(
            RPMSettings(**settings), RPMStore(tmp_path / f"rpm{len(engines)}.sqlite3"), embedder, llm  # type: ignore[arg-type]
        )
        engines.append(engine)
        return engine

    yield _make
    for engine in engines:
        engine.close()
