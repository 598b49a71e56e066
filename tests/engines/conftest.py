"""A private engine world per test: an empty cache, nothing on PATH, no engine setting.

Every lookup test starts from "no engine anywhere" and adds the ones it needs, so what the
machine running the tests has installed (a native build in the real cache, a llama-server on
PATH) never decides an outcome.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lemonade_jupyter.core.engines import install


def make_executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


#: One file for each part of a CUDA toolkit (the layout of a system toolkit, as
#: ``cuda_toolkit.COMPONENTS`` looks for it), by part.
TOOLKIT_FILES = {
    "nvcc": ("bin/nvcc", "bin/ptxas", "bin/fatbinary"),
    "crt": ("include/crt/host_config.h",),
    "nvvm": ("nvvm/bin/cicc", "nvvm/libdevice/libdevice.10.bc"),
    "cudart": ("include/cuda_runtime.h", "lib64/libcudart.so.12"),
    "cublas": ("include/cublas_v2.h", "lib64/libcublas.so.12"),
    "cccl": ("include/cub/cub.cuh",),
}


def make_toolkit(root: Path, *, without: tuple[str, ...] = (), nvcc: str | None = None) -> Path:
    """A fake CUDA toolkit at ``root`` with every part but those in ``without``; ``nvcc`` is
    the compiler's script (default: one that exits 0). Returns ``root``."""
    for part, files in TOOLKIT_FILES.items():
        if part in without:
            continue
        for name in files:
            if name == "bin/nvcc":
                make_executable(root / name, nvcc or "#!/bin/sh\nexit 0\n")
            else:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).touch()
    return root


@pytest.fixture
def bare_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache (``$LEMONADE_CACHE_DIR``), a ``PATH`` of one empty folder, no
    ``$LEMONADE_LLAMA_SERVER`` and no CUDA hints; returns the folder on ``PATH``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("LEMONADE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(bin_dir))
    for var in ("LEMONADE_LLAMA_SERVER", "LEMONADE_PREBUILT", "CUDAARCHS"):
        monkeypatch.delenv(var, raising=False)
    # An empty toolkit folder: no nvcc, and /usr/local/cuda is not looked at.
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert not os.listdir(bin_dir)
    return bin_dir


@pytest.fixture(autouse=True)
def cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's CPU does not decide these tests (``test_stale_builds.py`` sets AMX on):
    fake cached builds have no ``build.json``, which on an AMX CPU passes them over."""
    monkeypatch.setattr(install, "_cpu_has_amx", lambda: False)
