"""Cost per answer for bench/vas.py: each decoding method with the torch and the vLLM value backend."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from bench.vas_data import reward_fn, summarize
from reasoning.vas.backends import VLLMBackend
from reasoning.vas.value_model import render_prompt

if TYPE_CHECKING:
    from bench.vas import Bench

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


async def cost_section(bench: Bench) -> dict[str, Any]:
    """Cost per answer for each method and both value backends (the same value model behind each)."""
    name, tag = bench.args.trace_reward, bench.args.tag
    prompts = bench.prompts[: bench.args.cost_prompts]
    k = max(bench.args.budget_k)
    configs = [
        ("plain (beta=0)", bench.params(beta=0.0)),
        (f"token VAS beta={bench.args.budget_beta:g}", bench.params(beta=bench.args.budget_beta)),
        (
            f"block VAS K={k} M={bench.args.block_tokens}",
            bench.params(
                mode="block",
                beta=1.0,
                block_candidates=k,
                block_tokens=bench.args.block_tokens,
                block_select="argmax",
            ),
        ),
        (f"best-of-{k}", bench.params(mode="best_of_n", beta=1.0, best_of=k)),
    ]
    reward = reward_fn(name)
    rows = []
    bench.mark_load(f"cost:{tag}:start")
    for label, params in configs:
        answers = await bench.rows(f"cost:{tag}:torch:{label}", bench.backends[name], params, prompts)
        rows.append(
            {
                "label": label,
                "backend": "torch" if params.beta > 0 else "-",
                **summarize([reward.score(a["prompt"], a["text"]) for a in answers], answers),
            }
        )
    agreement: dict[str, Any] = {}
    if bench.args.vllm and VLLM_PYTHON.exists():
        todo = [
            (label, p)
            for label, p in configs[1:3]
            if len(bench.cache.get(f"cost:{tag}:vllm:{label}")) < len(prompts)
        ]
        proc, url, started = (None, "", time.perf_counter())
        if todo or "vllm_agreement" not in bench.cache.rows:
            proc, url = start_vllm(bench.paths[name], Path(bench.args.work) / "vllm.log")
            agreement_startup = time.perf_counter() - started
        try:
            vb = VLLMBackend(url or "http://127.0.0.1:1", "value", timeout=120)
            if proc is not None:
                texts = [
                    render_prompt(bench.tok, [{"role": "user", "content": p}]) + a["text"]
                    for p, a in zip(
                        prompts, bench.cache.get(f"cost:{tag}:torch:{configs[1][0]}"), strict=False
                    )
                ]
                got = await vb.score_texts(texts)
                want = bench.backends[name].score_texts(texts)
                bench.cache.rows["vllm_agreement"] = [
                    {
                        "max_abs_diff": max(abs(a - b) for a, b in zip(got, want, strict=True)),
                        "texts": len(texts),
                        "startup_s": agreement_startup,
                    }
                ]
                bench.cache.save()
            for label, params in configs[1:3]:
                answers = await bench.rows(f"cost:{tag}:vllm:{label}", vb, params, prompts)
                rows.append(
                    {
                        "label": label,
                        "backend": "vLLM (CPU)",
                        **summarize([reward.score(a["prompt"], a["text"]) for a in answers], answers),
                    }
                )
            await vb.close()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
        agreement = bench.cache.rows.get("vllm_agreement", [{}])[0]
    bench.mark_load(f"cost:{tag}:end")
    return {"reward": name, "prompts": len(prompts), "rows": rows, "vllm_vs_torch": agreement}


def start_vllm(model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    from tests.support.servers import free_port

    port = free_port()
    cmd = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        "value",
        "--runner",
        "pooling",
        "--convert",
        "classify",
        "--pooler-config",
        '{"use_activation": false}',
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 900
    with tqdm(desc="starting vLLM CPU server", unit="s") as bar:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}: see {log}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                proc.terminate()
                raise RuntimeError(f"vLLM did not become healthy: see {log}")
            time.sleep(1)  # polling a server's start-up
            bar.update(1)
