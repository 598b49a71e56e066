#!/usr/bin/env bash
# Make gpu-bundle.tar.gz for scripts/gpu_check.sh: what a GPU machine without internet needs,
# under 64 MiB. Run it here (it downloads from PyPI); carry the tarball and the repository.
#   - llama.cpp's sources from the llama-cpp-python sdist, trimmed: the CPU and CUDA backends,
#     the server and its libraries, one vocabulary GGUF (the models are made there);
#   - wheels for Python 3.12 of what that machine lacks: jupyter_server and its dependencies
#     (the router's proxy runs in a real Jupyter server), gguf, prometheus_client, platformdirs,
#     huggingface_hub;
#   - a CUDA llama-server built here, when there is one ($CUDA_BINARY, default: the cached
#     `install-llama-server --gpu cuda` build) and the bundle still fits in 64 MiB with it:
#     bin/llama-server-cuda and its build.json (the architectures it was built for). Only the
#     binary: cuBLAS alone is 420 MB. A build for 9.0 alone is 44 MiB gzipped, which with the
#     42 MiB of the rest does not fit: the GPU machine then builds its own (gpu_check.sh). The GPU machine needs an NVIDIA driver of 580 or newer
#     (CUDA 13), and libcudart.so.13, libcublas.so.13 and libcublasLt.so.13 either at the
#     path the binary's RUNPATH names (`readelf -d`: this machine's cuda-toolkit-13) or on its
#     LD_LIBRARY_PATH; then LEMONADE_LLAMA_SERVER=.../bin/llama-server-cuda runs it.
# Usage: bash scripts/gpu_bundle.sh [OUT.tar.gz]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-gpu-bundle.tar.gz}")"
PY="${PYTHON:-.venv/bin/python}"
VERSION="$("$PY" -c 'from lemonade_jupyter.core.engines.install import LLAMA_CPP_PYTHON_VERSION as v; print(v)')"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK/sdist"
tar xzf "$WORK"/sdist/*.tar.gz -C "$WORK"
SRC="$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)"
DEST="$WORK/bundle/llama.cpp"
mkdir -p "$DEST/models"
# The build needs these; tests, docs, examples and the other backends it does not.
for part in CMakeLists.txt CMakePresets.json cmake common include src tools vendor licenses LICENSE; do
  [ -e "$SRC/$part" ] && cp -r "$SRC/$part" "$DEST/"
done
mkdir -p "$DEST/ggml/src"
cp -r "$SRC/ggml/CMakeLists.txt" "$SRC/ggml/cmake" "$SRC/ggml/include" "$DEST/ggml/"
for f in "$SRC"/ggml/src/*; do
  case "$(basename "$f")" in
    ggml-*) [ -d "$f" ] && continue ;;
  esac
  cp -r "$f" "$DEST/ggml/src/"
done
cp -r "$SRC/ggml/src/ggml-cpu" "$SRC/ggml/src/ggml-cuda" "$DEST/ggml/src/"
# Backends that ggml's CMakeLists adds unconditionally get an empty folder.
for d in "$SRC"/ggml/src/ggml-*/; do
  name="$(basename "$d")"
  [ -e "$DEST/ggml/src/$name" ] || { mkdir -p "$DEST/ggml/src/$name"; touch "$DEST/ggml/src/$name/CMakeLists.txt"; }
done
cp "$SRC/models/ggml-vocab-llama-spm.gguf" "$DEST/models/"
"$PY" -m pip download -q -d "$WORK/bundle/wheels" --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  jupyter_server gguf prometheus_client platformdirs huggingface_hub ipython traitlets
LIMIT=$((64 * 1024 * 1024))
tar czf "$OUT" -C "$WORK/bundle" .
DEFAULT_CUDA="$("$PY" -c 'from lemonade_jupyter.core.engines import install
print(install.cached_binary("cuda"))')"
CUDA_BINARY="${CUDA_BINARY:-$DEFAULT_CUDA}"
if [ -x "$CUDA_BINARY" ]; then
  mkdir -p "$WORK/bundle/bin"
  cp "$CUDA_BINARY" "$WORK/bundle/bin/llama-server-cuda"
  info="$(dirname "$CUDA_BINARY")/build.json"
  [ -f "$info" ] && cp "$info" "$WORK/bundle/bin/llama-server-cuda.json"
  tar czf "$WORK/with-cuda.tar.gz" -C "$WORK/bundle" .
  size="$(stat -c %s "$WORK/with-cuda.tar.gz")"
  if [ "$size" -le "$LIMIT" ]; then
    mv "$WORK/with-cuda.tar.gz" "$OUT"
    echo "carries the CUDA llama-server $CUDA_BINARY"
  else
    echo "left out the CUDA llama-server $CUDA_BINARY:" \
      "the bundle would be $((size / 1048576)) MiB"
  fi
fi
echo "wrote $OUT ($(du -h "$OUT" | cut -f1))"
