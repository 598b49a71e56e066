#!/usr/bin/env bash
# One command: install everything (building llama-server if absent), start JupyterLab with the
# lemonade extension, load and pin the default model, and print a chat answer.
# Flags: --headless (a bare Jupyter server, no Lab), --exit (stop after the answer).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh lab
exec "${LEMONADE_VENV:-.venv}/bin/lemonade-jupyter" quickstart "$@"
