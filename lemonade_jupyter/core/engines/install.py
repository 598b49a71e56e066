"""Build ``llama-server`` once from the llama.cpp sources on PyPI into a per-user cache.

There is no model hub or binary download on the machines we target, but the package index
carries the ``llama-cpp-python`` sdist, whose ``vendor/llama.cpp`` is the whole llama.cpp tree
(``tools/server`` included). We build only the ``llama-server`` target, statically, with CURL off,
which takes about 8 minutes on 2 cores, and never rebuild while the cached binary is present.

The cache lives at ``$LEMONADE_CACHE_DIR`` or ``$XDG_CACHE_HOME/lemonade_jupyter`` (default
``~/.cache/lemonade_jupyter``), outside any repository.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

#: The sdist version whose vendored llama.cpp we build. Pinned so that every machine builds
#: (and caches) the same server; bump it deliberately.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"


def cache_root() -> Path:
    """The per-user cache directory of lemonade_jupyter."""
    explicit = os.environ.get("LEMONADE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "lemonade_jupyter"


def cached_binary() -> Path:
    """Where the cached ``llama-server`` build lives (it may not exist)."""
    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "bin" / "llama-server"


def install_llama_server(*, force: bool = False, jobs: int | None = None) -> Path:
    """Build ``llama-server`` into the cache unless it is already there; return its path.

    Blocking (minutes); meant for the command line, never for the server's event loop.
    Raises ``RuntimeError`` with the failing step's output tail.
    """
    target = cached_binary()
    if target.exists() and not force:
        print(f"llama-server already built: {target}")
        return target
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"Building llama-server needs '{tool}' on PATH")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lemonade-llama-build-") as work:
        workdir = Path(work)
        _run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(workdir),
            ],
            "download the llama-cpp-python sdist",
        )
        sdists = glob.glob(str(workdir / "llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise RuntimeError("pip download produced no llama-cpp-python sdist")
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(workdir, filter="data")
        source = next(workdir.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = workdir / "build"
        _run(
            [
                "cmake", "-S", str(source), "-B", str(build),
                "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DBUILD_SHARED_LIBS=OFF",
            ],
            "configure llama.cpp",
        )
        _run(
            ["cmake", "--build", str(build), "--target", "llama-server",
             "-j", str(jobs or os.cpu_count() or 2)],
            "build llama-server",
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copy2(build / "bin" / "llama-server", tmp)
        os.replace(tmp, target)
    print(f"Built llama-server in {time.monotonic() - started:.0f} s: {target}")
    return target


def _run(cmd: list[str], what: str) -> None:
    print(f"lemonade-jupyter: {what} ...", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise RuntimeError(f"Could not {what} (exit {proc.returncode}):\n{tail}")
