#!/usr/bin/env bash
# Creates .venv-litellm (idempotent): LiteLLM's own proxy server, the peer in bench/overhead.py.
# `litellm[proxy]` does not resolve at 1.110.2 (it wants litellm-proxy / litellm-enterprise builds that are not
# published for it), so install litellm plus the packages its proxy server imports, each pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-litellm
PY=${PYTHON:-python3.11}
PINS=(
  litellm==1.110.2
  backoff==2.2.1 PyYAML==6.0.4 orjson==3.13.0 APScheduler==3.11.3 python-multipart==0.0.34
  fastapi-sso==0.23.0 PyJWT==2.15.1 cryptography==50.0.2 rq==2.12.0 gunicorn==23.0.0 websockets==15.0.1
  PyNaCl==1.6.2 uvloop==0.23.0 semver==3.1.2 Expression==5.8.0 polars==1.44.2 tomlkit==0.15.2 mcp==2.3.0
  soundfile==0.14.0 httpx2==2.16.2 rich==13.9.4
  # The same ASGI stack as Rapport's venv, so both servers run uvicorn + uvloop + httptools alike.
  uvicorn==0.54.0 httptools==0.9.0 fastapi==0.165.0 starlette==1.10.0
)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if "$VENV/bin/python" - "${PINS[@]}" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
then
  echo "$VENV is ready (litellm $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("litellm"))'))"
else
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
  echo "$VENV installed"
fi
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --help >/dev/null
