"""A CUDA toolkit for the CUDA build of ``llama-server``, from the system or from NVIDIA's wheels.

Many GPU machines have the driver and the CUDA runtime but not the whole toolkit a build of
llama.cpp's CUDA backend needs: ``nvcc`` (with ``ptxas``, ``cicc`` and the ``crt`` headers),
the runtime's headers (``cuda_runtime.h``), cuBLAS (``cublas_v2.h``, ``libcublas.so``) and the
CCCL headers (CUB, Thrust, libcu++). NVIDIA publishes every one of these parts as a wheel on
PyPI, so a build can take them from there into a folder of its own in the user cache, with no
root, no package manager and no ``LD_LIBRARY_PATH``.

What the wheels hold (checked with ``pip download --no-deps`` and ``unzip -l``):

* CUDA 13's wheels (``nvidia-cuda-nvcc``, ``nvidia-cuda-crt``, ``nvidia-nvvm``,
  ``nvidia-cuda-runtime``, ``nvidia-cublas``, ``nvidia-cuda-cccl``) all unpack into one tree,
  ``nvidia/cu13/{bin,include,lib,nvvm}``, which is a toolkit once two things are added:
  ``lib64`` (nvcc's ``nvcc.profile`` passes ``-L$TOP/lib64``) and the unversioned library names
  (``libcudart.so``, ``libcublas.so``...) that CMake's ``FindCUDAToolkit`` looks for; the
  wheels carry only ``libcublas.so.13``. See :func:`link_layout`.
* CUDA 12's ``nvidia-cuda-nvcc-cu12`` carries ``ptxas`` and ``nvvm`` but no ``nvcc``, so a
  CUDA 12 toolkit cannot be had from wheels: :func:`wheel_major` says so.

A toolkit from wheels is installed whole (one ``pip install --target`` of every wheel, then
renamed into place), never merged into a system toolkit: nvcc finds its headers and libraries
relative to itself, and a system ``nvcc`` 13.0 beside wheel headers of another release is a
build that breaks in ways the message would not explain. :func:`plan_toolkit` says what the
system toolkit has, what it lacks and which wheels fill the gap; it reads the file tree only.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .build_errors import BuildFlavourError

#: What a CUDA build of llama.cpp needs from a toolkit: each part, with the files (globs
#: relative to the toolkit's root, any one of a tuple) that show it is there.
COMPONENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "nvcc": (("bin/nvcc",), ("bin/ptxas",), ("bin/fatbinary",)),
    "crt": (("include/crt/host_config.h", "targets/*/include/crt/host_config.h"),),
    "nvvm": (("nvvm/bin/cicc",), ("nvvm/libdevice/libdevice*.bc",)),
    "cudart": (("include/cuda_runtime.h", "targets/*/include/cuda_runtime.h"),
               ("lib64/libcudart.so*", "lib/libcudart.so*", "targets/*/lib/libcudart.so*")),
    "cublas": (("include/cublas_v2.h", "targets/*/include/cublas_v2.h"),
               ("lib64/libcublas.so*", "lib/libcublas.so*", "targets/*/lib/libcublas.so*",
                "lib64/libcublas_static.a", "targets/*/lib/libcublas_static.a")),
    "cccl": (("include/cccl/cub/cub.cuh", "include/cub/cub.cuh",
              "targets/*/include/cccl/cub/cub.cuh", "targets/*/include/cub/cub.cuh"),),
}

#: In words, for messages.
COMPONENT_NAMES = {
    "nvcc": "the compiler (nvcc, ptxas)", "crt": "nvcc's crt headers",
    "nvvm": "NVVM (cicc, libdevice)", "cudart": "the CUDA runtime (cuda_runtime.h, libcudart)",
    "cublas": "cuBLAS (cublas_v2.h, libcublas)", "cccl": "the CCCL headers (CUB, Thrust)",
}

#: The wheel that carries each part, per CUDA major. The release is pinned to the major's
#: first minor (13.0), which every driver of that major (580 and newer for 13) runs.
WHEELS: dict[int, dict[str, str]] = {
    13: {
        "nvcc": "nvidia-cuda-nvcc==13.0.*", "crt": "nvidia-cuda-crt==13.0.*",
        "nvvm": "nvidia-nvvm==13.0.*", "cudart": "nvidia-cuda-runtime==13.0.*",
        "cublas": "nvidia-cublas==13.0.*", "cccl": "nvidia-cuda-cccl==13.0.*",
    },
}

#: Where the wheels of each major put the toolkit, relative to the ``--target`` folder.
WHEEL_HOME = {13: "nvidia/cu13"}

#: The oldest driver of each major, for messages.
_MIN_DRIVER = {13: "580"}


@dataclass(frozen=True)
class ToolkitPlan:
    """Which toolkit the CUDA build uses, and what must be installed first.

    ``home`` is the toolkit's root (``bin/nvcc`` below it). ``system`` is the system toolkit
    looked at (or None), with the parts it has (``present``) and lacks (``missing``). When
    ``wheels`` is not empty they are installed into ``target`` first, and ``home`` lies in
    there; when it is empty, ``home`` is ready as it is.
    """

    major: int
    home: str
    system: str | None
    present: tuple[str, ...]
    missing: tuple[str, ...]
    wheels: tuple[str, ...] = ()
    target: str | None = None

    @property
    def from_wheels(self) -> bool:
        """Whether the build's toolkit is the one made of NVIDIA's wheels."""
        return self.target is not None

    @property
    def nvcc(self) -> str:
        """The compiler the build is given."""
        return os.path.join(self.home, "bin", "nvcc")

    def describe(self) -> str:
        """One line for the installer's output: whose toolkit, and why."""
        if not self.from_wheels:
            return f"the CUDA toolkit at {self.home}"
        if self.system is None:
            why = "no CUDA toolkit found"
        else:
            why = (f"the CUDA toolkit at {self.system} lacks "
                   + ", ".join(COMPONENT_NAMES[c] for c in self.missing))
        what = ("installing " + " ".join(self.wheels)) if self.wheels else "already installed"
        return f"{why}; CUDA {self.major} from NVIDIA's wheels in {self.target} ({what})"


def scan(root: str) -> dict[str, bool]:
    """For each part in :data:`COMPONENTS`, whether the toolkit at ``root`` has it."""
    return {name: all(any(glob.glob(os.path.join(root, p)) for p in alternatives)
                      for alternatives in needs)
            for name, needs in COMPONENTS.items()}


def missing_components(root: str) -> list[str]:
    """The parts the toolkit at ``root`` lacks, in :data:`COMPONENTS` order."""
    return [name for name, there in scan(root).items() if not there]


def wheel_major(driver: tuple[int, int] | None) -> int:
    """The CUDA major to take from wheels for a driver that runs CUDA ``driver`` (NVML's
    ``nvmlSystemGetCudaDriverVersion``), or the newest one when no driver is visible.

    Raises :class:`BuildFlavourError` when the driver is older than every major with a
    compiler on PyPI (CUDA 12's wheels have no ``nvcc``)."""
    majors = sorted(WHEELS)
    if driver is None:
        return majors[-1]
    usable = [m for m in majors if m <= driver[0]]
    if not usable:
        oldest = majors[0]
        raise BuildFlavourError(
            f"the NVIDIA driver here runs CUDA {driver[0]}.{driver[1]}, and NVIDIA's wheels "
            f"carry a CUDA compiler only from CUDA {oldest} on (driver {_MIN_DRIVER[oldest]} "
            f"or newer). Install a CUDA {driver[0]} toolkit with cuBLAS and pass --cuda-home "
            "(or set CUDA_HOME), or update the driver")
    return usable[-1]


def plan_toolkit(system: str | None, cache: str | os.PathLike[str], major: int) -> ToolkitPlan:
    """Say which toolkit the build uses: ``system`` (a toolkit root, or None) when it has
    every part, else CUDA ``major`` from wheels in ``cache/cuda-toolkit-<major>``, with the
    wheels still to install (none when a complete one is there already). Reads files only."""
    present: tuple[str, ...] = ()
    missing = tuple(COMPONENTS)
    if system is not None:
        found = scan(system)
        present = tuple(c for c, there in found.items() if there)
        missing = tuple(c for c, there in found.items() if not there)
        if not missing:
            return ToolkitPlan(major, system, system, present, ())
    if major not in WHEELS:
        raise BuildFlavourError(f"no wheels known for CUDA {major}")
    target = os.path.join(os.fspath(cache), f"cuda-toolkit-{major}")
    home = os.path.join(target, WHEEL_HOME[major])
    wheels = () if not missing_components(home) else tuple(WHEELS[major].values())
    return ToolkitPlan(major, home, system, present, missing, wheels, target)


def pip_install_argv(wheels: Sequence[str], target: str, *,
                     python: str | None = None) -> list[str]:
    """The ``pip install`` of ``wheels`` into ``target`` by ``python`` (default: this
    interpreter); binary wheels only, no dependencies: the list is the whole toolkit."""
    return [python or sys.executable, "-m", "pip", "install", "--no-deps",
            "--only-binary", ":all:", "--target", target, *wheels]


def link_layout(home: str) -> None:
    """Make the tree the wheels unpacked at ``home`` look like a toolkit: ``lib64`` beside
    ``lib``, and ``libX.so`` beside every ``libX.so.N`` (what a linker looks for)."""
    lib = os.path.join(home, "lib")
    lib64 = os.path.join(home, "lib64")
    if os.path.isdir(lib) and not os.path.lexists(lib64):
        os.symlink("lib", lib64)
    for versioned in glob.glob(os.path.join(lib, "lib*.so.*")):
        name = os.path.basename(versioned)
        plain = os.path.join(lib, name[:name.index(".so") + 3])
        if not os.path.lexists(plain):
            os.symlink(name, plain)


def library_dirs(home: str) -> list[str]:
    """The folders of ``home`` that hold the CUDA runtime and cuBLAS, which the binary needs
    at run time (what its RUNPATH names), real paths, without repeats."""
    dirs: list[str] = []
    for pattern in ("lib64/libcudart.so*", "lib/libcudart.so*", "targets/*/lib/libcudart.so*",
                    "lib64/libcublas.so*", "lib/libcublas.so*", "targets/*/lib/libcublas.so*"):
        for found in sorted(glob.glob(os.path.join(home, pattern))):
            folder = os.path.realpath(os.path.dirname(found))
            if folder not in dirs:
                dirs.append(folder)
    return dirs


def has_driver_stub(home: str) -> bool:
    """Whether ``home`` has ``stubs/libcuda.so``, the driver library to link against without
    a driver. The wheels have none: such a build does not link ``libcuda`` (llama.cpp's
    ``GGML_CUDA_NO_VMM``), so it starts on a machine without a driver and says it sees no GPU."""
    return any(glob.glob(os.path.join(home, p)) for p in (
        "lib64/stubs/libcuda.so", "lib/stubs/libcuda.so", "targets/*/lib/stubs/libcuda.so"))


Runner = Callable[[Sequence[str], str], None]


def install_toolkit(plan: ToolkitPlan, run: Runner, *, python: str | None = None) -> str:
    """Install ``plan.wheels`` into ``plan.target`` and return the toolkit's root.

    ``run(argv, what)`` runs one step and raises on failure (the installer's, which shows
    progress). The wheels go into a fresh folder beside the target that is renamed into place
    once complete, so an interrupted install leaves no half toolkit behind (and ``pip install
    --target`` into a folder that has ``nvidia/`` already would skip, not merge, the new
    parts). Raises :class:`BuildFlavourError` when the result still lacks a part."""
    if not plan.wheels:
        return plan.home
    if plan.target is None:
        raise ValueError("a plan with wheels has a target")
    parent = os.path.dirname(plan.target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".cuda-toolkit-", dir=parent)
    try:
        run(pip_install_argv(plan.wheels, staging, python=python),
            f"install CUDA {plan.major} from NVIDIA's wheels (about 530 MB to download)")
        home = os.path.join(staging, WHEEL_HOME[plan.major])
        link_layout(home)
        lacking = missing_components(home)
        if lacking:
            raise BuildFlavourError("the wheels " + " ".join(plan.wheels) + " did not bring "
                               + ", ".join(COMPONENT_NAMES[c] for c in lacking))
        os.chmod(staging, 0o755)  # mkdtemp's 0700: whoever runs the binary reads its libraries
        if os.path.lexists(plan.target):
            shutil.rmtree(plan.target)
        os.replace(staging, plan.target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return plan.home


def nvcc_runs(nvcc: str) -> bool:
    """Whether ``nvcc --version`` runs (a toolkit from wheels of the wrong platform won't)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and re.search(r"release \d+\.\d+", out.stdout) is not None
