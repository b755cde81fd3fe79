"""Memory fixtures: one real embedding model per session, services over real Chroma, a Chroma server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from memory.config import MemorySettings
from memory.embedding import SentenceTransformerEmbedder
from memory.jobs import JobQueue
from memory.llm import LLMResult
from memory.service import MemoryService
from rapport.core.database import Database


@pytest.fixture(scope="session")
def embedder() -> Iterator[SentenceTransformerEmbedder]:
    model = SentenceTransformerEmbedder()
    yield model
    model.close()


class RecordingLLM:
    """A utility LLM with a scripted answer: the real one's output cannot be asserted on."""

    def __init__(self, answer: str = "The user prefers vegetarian food.") -> None:
        self.answer = answer
        self.prompts: list[str] = []

    async def chat(self, messages: list[dict[str, Any]], **options: Any) -> LLMResult:
        self.prompts.append(str(messages[-1]["content"]))
        return LLMResult(text=self.answer, raw={"model": "recording"})


@pytest.fixture()
def llm() -> RecordingLLM:
    return RecordingLLM()


MakeService = Callable[..., MemoryService]


@pytest.fixture()
async def make_service(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, llm: RecordingLLM
) -> AsyncIterator[MakeService]:
    made: list[tuple[MemoryService, JobQueue]] = []

    def _make(
        data_dir: Path | None = None, start_jobs: bool = True, catalog: Database | None = None, **overrides: Any
    ) -> MemoryService:
        """A service over real Chroma under `data_dir`; its catalog in `catalog` (a test's `storage.open()`,
        either backend) or, by default, in today's embedded file under the data dir."""
        root = data_dir or tmp_path / "data"
        jobs = JobQueue(root / "jobs.sqlite3", poll_interval_s=0.05)
        service = MemoryService(
            MemorySettings(**overrides),
            data_dir=root,
            embedder=embedder,
            jobs=jobs,
            llm_factory=lambda: llm,
            catalog_db=catalog,
        )
        made.append((service, jobs))
        return service

    yield _make
    for service, jobs in made:
        await jobs.close()
        await service.writer.aclose()
        service.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real `chroma run` server process on a free port, stopped after the session."""
    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = _free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    log = (path / "server.log").open("wb")
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    process = subprocess.Popen(
        [exe, "run", "--path", str(path / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"chroma server did not start: {(path / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
