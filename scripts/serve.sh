#!/usr/bin/env bash
# Install what Rapport needs (idempotent) and serve it on the embedded default: SmolLM2 via llama.cpp as the
# upstream, embedded stores under ./.rapport. Extra arguments go to `rapport serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
RAPPORT_EXTRAS="${RAPPORT_EXTRAS:-local,dev,train}" bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True ANONYMIZED_TELEMETRY=False
exec .venv/bin/rapport serve "$@"
