#!/usr/bin/env bash
# One command, no compiler needed: install everything (with the prebuilt llama.cpp server),
# start JupyterLab with the lemonade extension, load and pin the default model, and print a
# chat answer. While it serves, a native llama-server is built in the background when cmake
# and a C++ compiler are present, and the model moves onto it.
# Flags: --headless (a bare Jupyter server, no Lab), --exit (stop after the answer),
# --no-build (stay on the prebuilt engine).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh lab
exec "${LEMONADE_VENV:-.venv}/bin/lemonade-jupyter" quickstart "$@"
