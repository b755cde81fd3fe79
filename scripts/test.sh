#!/usr/bin/env bash
# Install everything (idempotent), then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ -f scripts/setup_vllm.sh ]; then bash scripts/setup_vllm.sh; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True ANONYMIZED_TELEMETRY=False
echo "== ruff" && .venv/bin/ruff check proxy memory reasoning rapport scripts tests/docs
echo "== mypy" && .venv/bin/mypy
echo "== pytest" && exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 "$@"
