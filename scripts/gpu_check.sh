#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, nvcc, CMake, ninja and Python 3.12 (with
# torch, numpy, psutil, nvidia-ml-py, aiohttp, httpx) but no internet: build the CUDA engine for
# this GPU only, load three synthetic models fully offloaded, compare the per-model VRAM sources,
# evict one, check admission by fit with a pinned model, and stream direct vs through the router.
# Writes the results to OUT/gpu_check.json (and prints them). Needs gpu-bundle.tar.gz, made on a
# machine with PyPI by scripts/gpu_bundle.sh. Meant to finish in under 9 minutes.
# Usage: bash scripts/gpu_check.sh [OUT]      (GPU_BUNDLE=path overrides ./gpu-bundle.tar.gz;
#        GPU_CHECK_ARGS="--cpu --model-mib 100" runs the same steps on the CPU build, as a dry run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu-check}}"
BUNDLE="${GPU_BUNDLE:-gpu-bundle.tar.gz}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
tar xzf "$BUNDLE" -C "$WORK"
"$PY" -m venv --system-site-packages "$WORK/venv"
"$WORK/venv/bin/pip" install -q --no-index --find-links "$WORK/wheels" \
  jupyter_server gguf prometheus_client platformdirs huggingface_hub ipython traitlets
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LEMONADE_CACHE_DIR="${LEMONADE_CACHE_DIR:-$WORK/cache}"
export LEMONADE_PREBUILT=0
# shellcheck disable=SC2086
timeout 530 "$WORK/venv/bin/python" scripts/gpu_check.py --source "$WORK/llama.cpp" \
  --vocab "$WORK/llama.cpp/models/ggml-vocab-llama-spm.gguf" --out "$OUT/gpu_check.json" \
  ${GPU_CHECK_ARGS:-}
