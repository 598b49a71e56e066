"""What the machine offers an engine: a visible NVIDIA GPU, a CUDA compiler, compute capabilities.

Two different questions, answered two different ways:

* *Run time* ("is a GPU visible, so prefer the CUDA build?"): :func:`gpu_visible` looks for
  the NVIDIA device files. That costs a directory listing and no driver call, so the router can
  ask it on its event loop before every start.
* *Build time* ("which flavour do we build, for which GPUs?"): :func:`build_plan` looks for
  a complete CUDA toolkit (``nvcc`` on ``PATH`` or under ``$CUDA_HOME``; else, for ``--gpu
  cuda``, one from NVIDIA's wheels, see :mod:`.cuda_toolkit`) and asks NVML for the compute
  capability of every GPU, and builds for those architectures only, which keeps a CUDA build
  of ``llama-server`` to the one or two architectures the machine has instead of the dozen of
  a release build. Architectures a user names (``--cuda-arch``, ``$CUDAARCHS``) reach nvcc's
  command line, so they are checked against :data:`KNOWN_ARCHS`.

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

from . import cuda_toolkit as tk
from .build_errors import BuildFlavourError

#: The build flavours the installer knows, in the router's order of preference (given a GPU).
FLAVOURS = ("cuda", "cpu")

#: The oldest CUDA toolkit (major, minor) that can compile for an architecture. Architectures
#: not listed here need nothing newer than CUDA 11.0; CUDA 13 dropped everything below 75.
_MIN_CUDA = {
    "86": (11, 1), "87": (11, 4), "89": (11, 8), "90": (11, 8), "100": (12, 8),
    "101": (12, 8), "103": (12, 9), "110": (13, 0), "120": (12, 8), "121": (12, 9),
}

#: The CUDA architectures ``--cuda-arch`` and ``$CUDAARCHS`` may name (they reach nvcc's
#: command line): NVIDIA's compute capabilities from Maxwell on, each optionally with the
#: ``a`` (architecture-specific) or ``f`` (family) suffix of CUDA 12.8 and newer.
KNOWN_ARCHS = ("50", "52", "53", "60", "61", "62", "70", "72", "75", "80", "86", "87", "89",
               "90", "100", "101", "103", "110", "120", "121")


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


def parse_cuda_archs(text: str, *, source: str = "--cuda-arch") -> tuple[str, ...]:
    """``("80", "90")`` from ``80,90`` (or CMake's ``80;90``), each checked against
    :data:`KNOWN_ARCHS`; raises :class:`BuildFlavourError` naming ``source`` and the
    architectures it accepts."""
    archs: list[str] = []
    for item in (a for a in re.split(r"[;,\s]+", text.strip()) if a):
        m = re.fullmatch(r"(\d{2,3})([af]?)", item)
        if m is None or m.group(1) not in KNOWN_ARCHS:
            raise BuildFlavourError(
                f"{source}: {item[:20]!r} is not a CUDA architecture this build knows; use "
                f"compute capabilities without the dot, e.g. 80,90 (known: "
                f"{', '.join(KNOWN_ARCHS)}, optionally with an a or f suffix)")
        if item not in archs:
            archs.append(item)
    if not archs:
        raise BuildFlavourError(f"{source} names no architecture; e.g. 80,90")
    return tuple(archs)


def driver_cuda_version(nvml: Any | None = None) -> tuple[int, int] | None:
    """The newest CUDA the NVIDIA driver runs (NVML's ``nvmlSystemGetCudaDriverVersion``,
    ``13000`` is 13.0), or None without NVML or a driver."""
    try:
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no library, no driver: no version
        return None
    try:
        version = int(nvml.nvmlSystemGetCudaDriverVersion())
    except Exception:  # noqa: BLE001 - an NVML without the call
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return (version // 1000, version % 1000 // 10)


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


@dataclass(frozen=True)
class BuildPlan:
    """What ``install-llama-server`` builds: the flavour, and for CUDA the compiler,
    architectures and toolkit. ``reason`` says why, in words, for the command's output.

    ``toolkit`` (a :class:`.cuda_toolkit.ToolkitPlan`) says whose toolkit ``nvcc`` belongs to
    and what must be installed before the build; ``runpath`` lists the folders of the CUDA
    runtime and cuBLAS that the binary is linked to find at run time; ``no_vmm`` builds
    without linking the driver library (a toolkit without its stub, e.g. NVIDIA's wheels).
    """

    flavour: str
    reason: str
    nvcc: str | None = None
    cuda_version: tuple[int, int] | None = None
    archs: tuple[str, ...] = field(default_factory=tuple)
    toolkit: Any = None
    runpath: tuple[str, ...] = field(default_factory=tuple)
    no_vmm: bool = False


def build_plan(gpu: str = "auto", *, env: Mapping[str, str] | None = None,
               nvml: Any | None = None, cuda_archs: str | None = None,
               cuda_home: str | None = None, cache: str | os.PathLike[str] | None = None,
               ) -> BuildPlan:
    """Choose the flavour to build for ``--gpu auto|cuda|cpu``.

    ``auto``: CUDA when a complete toolkit is found (``nvcc`` on ``PATH`` or under
    ``$CUDA_HOME``, or one from NVIDIA's wheels already in ``cache``) and NVML reports at least
    one GPU it can compile for, else the CPU. ``cuda``: CUDA or a :class:`BuildFlavourError`
    naming what is missing; given a ``cache``, a missing or incomplete system toolkit is
    replaced by NVIDIA's wheels installed there (see :mod:`.cuda_toolkit`). ``cuda_home``
    (``--cuda-home``) names the toolkit to use, which must then be complete.

    The architectures are ``cuda_archs`` (``--cuda-arch 80,90``), else ``$CUDAARCHS`` (CMake's
    own variable, e.g. ``86;90``), else those NVML reports; the first two allow a CUDA build
    on a machine without a GPU, and both are checked against :data:`KNOWN_ARCHS`.
    """
    env = os.environ if env is None else env
    if gpu not in ("auto", "cuda", "cpu"):
        raise ValueError(f"gpu must be auto, cuda or cpu, not {gpu!r}")
    if gpu == "cpu":
        return BuildPlan("cpu", "--gpu cpu")

    if cuda_archs is not None:
        explicit, source = parse_cuda_archs(cuda_archs), "--cuda-arch"
    elif env.get("CUDAARCHS", "").strip():
        explicit = parse_cuda_archs(env["CUDAARCHS"], source="$CUDAARCHS")
        source = "$CUDAARCHS"
    else:
        explicit, source = (), "NVML"

    def refuse(message: str, nvcc: str | None = None,
               version: tuple[int, int] | None = None) -> BuildPlan:
        if gpu == "cuda":
            raise BuildFlavourError(f"--gpu cuda: {message}")
        return BuildPlan("cpu", message, nvcc, version)

    if cuda_home is not None:
        system: str | None = os.path.abspath(cuda_home)
        nvcc: str | None = os.path.join(system, "bin", "nvcc")
        lacking = tk.missing_components(system)
        if lacking:
            return refuse(f"the CUDA toolkit at {system} (--cuda-home) lacks "
                          + ", ".join(tk.COMPONENT_NAMES[c] for c in lacking))
    else:
        nvcc = find_nvcc(env)
        nvcc = toolkit_nvcc(nvcc) if nvcc else None
        system = os.path.dirname(os.path.dirname(nvcc)) if nvcc else None
        lacking = tk.missing_components(system) if system else list(tk.COMPONENTS)
    toolkit = None
    if not lacking:
        version = nvcc_version(nvcc) if nvcc else None
        toolkit = tk.plan_toolkit(system, cache or "", version[0] if version else 0)
    elif cache is not None:
        try:
            major = tk.wheel_major(driver_cuda_version(nvml))
        except BuildFlavourError as exc:
            return refuse(str(exc), nvcc)
        wheels = tk.plan_toolkit(system, cache, major)
        if gpu == "cuda" or not wheels.wheels:  # auto takes a toolkit already there only
            toolkit, nvcc, version = wheels, wheels.nvcc, (major, 0)
    if toolkit is None:
        if nvcc is None:
            return refuse("no CUDA compiler (nvcc) on PATH or under $CUDA_HOME; put nvcc on "
                          "PATH or set CUDA_HOME to the CUDA toolkit "
                          "(https://developer.nvidia.com/cuda-downloads)")
        return refuse(f"the CUDA toolkit of {nvcc} lacks "
                      + ", ".join(tk.COMPONENT_NAMES[c] for c in lacking)
                      + ", which the CUDA build needs; install them (e.g. the libcublas-dev "
                        "package), or let --gpu cuda take the toolkit from NVIDIA's wheels",
                      nvcc, nvcc_version(nvcc))
    archs = list(explicit) or compute_capabilities(nvml)
    if not archs:
        return refuse("NVML reports no GPU here, so the architectures to build for are "
                      "unknown; name them with --cuda-arch (or $CUDAARCHS), e.g. 90 for an "
                      "H100", nvcc)
    bad = unsupported_archs(archs, version)
    if bad:
        shown = ".".join(map(str, version)) if version else "?"
        dropped = version is not None and version >= (13, 0) and all(
            int(re.match(r"\d+", a).group(0)) < 75 for a in bad)  # type: ignore[union-attr]
        advice = ("CUDA 13 dropped them: use a CUDA 12 toolkit (--cuda-home)" if dropped
                  else "install a newer CUDA toolkit")
        return refuse(f"nvcc {shown} ({nvcc}) cannot build for compute capability "
                      f"{', '.join(bad)}; {advice}", nvcc, version)
    home = toolkit.home
    return BuildPlan("cuda", f"{toolkit.describe()}; compute capability {', '.join(archs)} "
                     f"(from {source})", nvcc, version, tuple(archs), toolkit=toolkit,
                     runpath=tuple(tk.library_dirs(home)), no_vmm=not tk.has_driver_stub(home))
