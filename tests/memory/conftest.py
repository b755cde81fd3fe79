"""Memory fixtures: one real embedding model per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from memory.embedding import SentenceTransformerEmbedder


@pytest.fixture(scope="session")
def embedder() -> Iterator[SentenceTransformerEmbedder]:
    model = SentenceTransformerEmbedder()
    yield model
    model.close()
