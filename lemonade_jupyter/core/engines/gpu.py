"""What the machine offers an engine: a visible NVIDIA GPU, a CUDA compiler, compute capabilities.

Two different questions, answered two different ways:

* *Run time* ("is a GPU visible, so prefer the CUDA build?"): :func:`gpu_visible` looks for
  the NVIDIA device files. That costs a directory listing and no driver call, so the router can
  ask it on its event loop before every start.
* *Build time* ("which flavour do we build, for which GPUs?"): :func:`build_plan` asks for
  ``nvcc`` (on ``PATH`` or under ``$CUDA_HOME``) and for the compute capability of every GPU
  that NVML reports, and builds for those architectures only, which keeps a CUDA build of
  ``llama-server`` to the one or two architectures the machine has instead of the dozen of a
  release build.

``nvml`` parameters take a module with pynvml's surface, so tests can hand in a fake.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The build flavours the installer knows, in the router's order of preference (given a GPU).
FLAVOURS = ("cuda", "cpu")

#: The oldest CUDA toolkit (major, minor) that can compile for an architecture. Architectures
#: not listed here need nothing newer than CUDA 11.0; CUDA 13 dropped everything below 75.
_MIN_CUDA = {
    "86": (11, 1), "87": (11, 4), "89": (11, 8), "90": (11, 8), "100": (12, 8),
    "101": (12, 8), "103": (12, 9), "110": (13, 0), "120": (12, 8), "121": (12, 9),
}


def gpu_visible(dev_dir: str = "/dev", env: Mapping[str, str] | None = None) -> bool:
    """True when an NVIDIA GPU is visible to processes we start.

    ``/dev/nvidia<N>`` exists for every GPU the driver exposes (also inside containers that
    were given a GPU); ``CUDA_VISIBLE_DEVICES`` set to nothing (or ``-1``) hides them all.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return False
    try:
        names = os.listdir(dev_dir)
    except OSError:
        return False
    return any(re.fullmatch(r"nvidia\d+", n) for n in names)


def find_nvcc(env: Mapping[str, str] | None = None) -> str | None:
    """The CUDA compiler: ``nvcc`` on ``PATH``, else ``$CUDA_HOME/bin/nvcc`` (``$CUDA_PATH``
    too), else ``/usr/local/cuda/bin/nvcc`` when neither variable is set."""
    env = os.environ if env is None else env
    found = shutil.which("nvcc", path=env.get("PATH", ""))
    if found:
        return found
    homes = [env[k] for k in ("CUDA_HOME", "CUDA_PATH") if env.get(k)]
    if not homes:
        homes = ["/usr/local/cuda"]
    for home in homes:
        candidate = os.path.join(home, "bin", "nvcc")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def toolkit_nvcc(nvcc: str) -> str:
    """The ``nvcc`` inside its CUDA toolkit. CMake looks for cuBLAS and the CUDA runtime next
    to the compiler it is given, so a wrapper script on ``PATH`` (``exec
    /usr/local/cuda-13.0/bin/nvcc "$@"``) makes the configure fail with "CUDA::cublas not
    found"; ``nvcc --dryrun`` names the folder it really runs from (``_HERE_``)."""
    real = os.path.realpath(nvcc)
    if _is_toolkit(os.path.dirname(os.path.dirname(real))):
        return real
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=30)
        m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    except (OSError, subprocess.SubprocessError):
        m = None
    if m:
        here = m.group(1).strip()
        candidate = os.path.join(here, "nvcc")
        if os.access(candidate, os.X_OK) and _is_toolkit(os.path.dirname(here)):
            return os.path.realpath(candidate)
    return real


def has_cublas(nvcc: str) -> bool:
    """Whether the toolkit of ``nvcc`` has cuBLAS, which llama.cpp's CUDA backend links (a
    minimal toolkit, e.g. nvcc and the runtime only, cannot build it)."""
    root = os.path.dirname(os.path.dirname(nvcc))
    return any(glob.glob(os.path.join(root, pattern)) for pattern in (
        "lib64/libcublas.so*", "lib/libcublas.so*", "targets/*/lib/libcublas.so*",
        "lib64/libcublas_static.a", "targets/*/lib/libcublas_static.a"))


def _is_toolkit(root: str) -> bool:
    return (os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))
            or bool(glob.glob(os.path.join(root, "targets", "*", "include", "cuda_runtime.h"))))


def parse_nvcc_version(text: str) -> tuple[int, int] | None:
    """``(12, 4)`` from ``nvcc --version``'s ``Cuda compilation tools, release 12.4, V12.4.131``."""
    m = re.search(r"release (\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def nvcc_version(nvcc: str) -> tuple[int, int] | None:
    """The toolkit version of ``nvcc``; None when it does not run or says something else."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvcc_version(out.stdout + out.stderr)


def compute_capabilities(nvml: Any | None = None) -> list[str]:
    """The CUDA architectures of the GPUs NVML reports (``["90"]`` for an H100), sorted,
    without repeats; ``[]`` without NVML, a driver, or a GPU."""
    try:
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no library, no driver, no permission: no GPU for us
        return []
    archs: set[str] = set()
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            archs.add(f"{int(major)}{int(minor)}")
    except Exception:  # noqa: BLE001 - a GPU that fell off the bus mid-way: keep the others
        pass
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return sorted(archs, key=int)


def unsupported_archs(archs: Iterable[str], cuda: tuple[int, int] | None) -> list[str]:
    """The architectures in ``archs`` that a CUDA toolkit of version ``cuda`` cannot target."""
    if cuda is None:
        return []
    bad = []
    for arch in archs:
        digits = re.match(r"\d+", arch)
        number = digits.group(0) if digits else arch
        if cuda < _MIN_CUDA.get(number, (11, 0)) or (cuda >= (13, 0) and int(number) < 75):
            bad.append(arch)
    return bad


class BuildFlavourError(RuntimeError):
    """The requested flavour cannot be built here; the message names what is missing."""


@dataclass(frozen=True)
class BuildPlan:
    """What ``install-llama-server`` builds: the flavour, and for CUDA the compiler and
    architectures. ``reason`` says why, in words, for the command's output."""

    flavour: str
    reason: str
    nvcc: str | None = None
    cuda_version: tuple[int, int] | None = None
    archs: tuple[str, ...] = field(default_factory=tuple)


def build_plan(gpu: str = "auto", *, env: Mapping[str, str] | None = None,
               nvml: Any | None = None) -> BuildPlan:
    """Choose the flavour to build for ``--gpu auto|cuda|cpu``.

    ``auto``: CUDA when ``nvcc`` is found and NVML reports at least one GPU it can compile
    for, else the CPU. ``cuda``: CUDA or a :class:`BuildFlavourError` naming what is missing.
    ``$CUDAARCHS`` (CMake's own variable, e.g. ``90`` or ``86;90``) overrides the
    architectures NVML reports, which also allows a CUDA build on a machine without a GPU.
    """
    env = os.environ if env is None else env
    if gpu not in ("auto", "cuda", "cpu"):
        raise ValueError(f"gpu must be auto, cuda or cpu, not {gpu!r}")
    if gpu == "cpu":
        return BuildPlan("cpu", "--gpu cpu")
    nvcc = find_nvcc(env)
    if nvcc is None:
        if gpu == "cuda":
            raise BuildFlavourError(
                "--gpu cuda needs the CUDA compiler: put nvcc on PATH or set CUDA_HOME to "
                "the CUDA toolkit (https://developer.nvidia.com/cuda-downloads)")
        return BuildPlan("cpu", "no CUDA compiler (nvcc) on PATH or under $CUDA_HOME")
    nvcc = toolkit_nvcc(nvcc)
    explicit = [a for a in re.split(r"[;,\s]+", env.get("CUDAARCHS", "")) if a]
    archs = explicit or compute_capabilities(nvml)
    if not archs:
        if gpu == "cuda":
            raise BuildFlavourError(
                "--gpu cuda: NVML reports no GPU here, so the architectures to build for are "
                "unknown; set CUDAARCHS (e.g. CUDAARCHS=90 for an H100)")
        return BuildPlan("cpu", f"{nvcc} found, but NVML reports no GPU", nvcc)
    version = nvcc_version(nvcc)
    if not has_cublas(nvcc):
        message = (f"the CUDA toolkit of {nvcc} has no cuBLAS (libcublas), which the CUDA "
                   "build links; install the toolkit's cuBLAS (e.g. the libcublas-dev package)")
        if gpu == "cuda":
            raise BuildFlavourError(f"--gpu cuda: {message}")
        return BuildPlan("cpu", message, nvcc, version)
    bad = unsupported_archs(archs, version)
    if bad:
        shown = ".".join(map(str, version)) if version else "?"
        message = (f"nvcc {shown} ({nvcc}) cannot build for compute capability "
                   f"{', '.join(bad)}; install a newer CUDA toolkit")
        if gpu == "cuda":
            raise BuildFlavourError(message)
        return BuildPlan("cpu", message, nvcc, version)
    source = "$CUDAARCHS" if explicit else "NVML"
    return BuildPlan("cuda", f"nvcc {nvcc} and compute capability {', '.join(archs)} "
                     f"(from {source})", nvcc, version, tuple(archs))
