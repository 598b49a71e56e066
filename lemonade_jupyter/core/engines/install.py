"""Build ``llama-server`` from the llama.cpp sources on PyPI into a per-user cache, per flavour.

Nothing needs this to get started: the ``[prebuilt]`` extra brings a prebuilt llama.cpp server
(see :mod:`.prebuilt_server`). A native build is faster (it is compiled for this CPU, or for
this machine's GPUs) and the router prefers it whenever one exists (see :mod:`.lookup`).

The package index carries the ``llama-cpp-python`` sdist, whose ``vendor/llama.cpp`` is the
whole llama.cpp tree (``tools/server`` included). We build only the ``llama-server`` target,
statically, with CURL off: about 8 minutes on 2 cores for the CPU. With a CUDA toolkit and a
GPU, the CUDA flavour is built for the compute capabilities of this machine's GPUs only (see
:func:`.gpu.build_plan`); ``--gpu cuda`` without a complete toolkit first installs one from
NVIDIA's wheels into the cache (see :mod:`.cuda_toolkit`), and the binary is linked with a
RUNPATH to that toolkit's cuBLAS and runtime, so it runs without ``LD_LIBRARY_PATH``. Each
flavour has its own folder in the cache, side by side, and a cached binary is never rebuilt
unless asked (``--force``). A new ``llama-server`` is started once on the default model before
it goes into the cache (:mod:`.first_start`): one that crashes on this CPU is kept out.

The cache is ``$LEMONADE_CACHE_DIR``, else platformdirs' user cache folder of
``lemonade_jupyter`` (``$XDG_CACHE_HOME/lemonade_jupyter``, by default
``~/.cache/lemonade_jupyter`` on Linux), outside any repository.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import platformdirs

from ..model_spec import default_model_path
from . import cuda_toolkit
from .first_start import check_first_start
from .gpu import FLAVOURS, BuildFlavourError, BuildPlan, build_plan
from .progress import ProgressPrinter

_log = logging.getLogger(__name__)

#: The sdist version whose vendored llama.cpp we build. Pinned so that every machine builds
#: (and caches) the same server; bump it deliberately.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

#: The command that builds the native engine (named in messages).
INSTALL_COMMAND = "lemonade-jupyter install-llama-server"


def cache_root() -> Path:
    """The per-user cache directory of lemonade_jupyter."""
    explicit = os.environ.get("LEMONADE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(platformdirs.user_cache_dir("lemonade_jupyter", appauthor=False))


def cached_binary(flavour: str = "cpu") -> Path:
    """Where the cached ``llama-server`` of ``flavour`` (``cpu`` or ``cuda``) lives; it may
    not exist. The CPU build keeps the folder name it always had."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}")
    suffix = "" if flavour == "cpu" else f"-{flavour}"
    return cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}{suffix}" / "bin" / "llama-server"


#: Compiler flags that keep ggml's AMX code out of a native x86 build. ``GGML_NATIVE`` compiles
#: for every extension the CPU reports, AMX included, and ggml's AMX matrix multiply crashes
#: (SIGSEGV in ``ggml_backend_amx_mul_mat`` during the warm-up decode) on Sapphire Rapids class
#: CPUs, a llama.cpp bug reported upstream and closed without a fix. Seen here: the CPU build
#: of llama-cpp-python 0.3.36's tree died loading the default model on a Xeon that reports
#: ``amx_int8`` (the kernel grants AMX), and the same build with these flags serves. An
#: explicit ``-mno-*`` wins over ``-march=native`` in GCC and Clang whatever the order.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def native_cpu_argv(machine: str | None = None) -> list[str]:
    """CMake arguments every ggml build (llama.cpp, whisper.cpp) gets for its CPU code: AMX
    left out on x86 (see :data:`NO_AMX_FLAGS`); nothing elsewhere (the flags are x86 only)."""
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch not in ("x86_64", "amd64"):
        return []
    return [f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}"]


def _cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU reports AMX (Linux's flags; False where they cannot be read)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def may_crash_here(binary: Path) -> bool:
    """Whether a cached build may crash on this CPU: made before x86 builds left ggml's AMX
    code out (its ``build.json`` lacks ``amx_left_out``) on a CPU that has AMX (see
    :data:`NO_AMX_FLAGS`). The lookup passes over such a build and the installer rebuilds it.

    The small ``build.json`` is read first: a build that records the change never costs a read
    of ``/proc/cpuinfo`` (hundreds of KiB on a large GPU node) on each backend start."""
    if not native_cpu_argv():
        return False
    try:
        info = json.loads((binary.parent / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and info.get("amx_left_out") is True:
        return False
    return _cpu_has_amx()


def passed_over(binary: Path, install_command: str) -> bool:
    """Whether a lookup must skip the cached ``binary`` (:func:`may_crash_here`); if so the
    server log says why and names ``install_command --force``, and the next engine in the
    lookup's order is used. One rule for llama-server and whisper-server builds."""
    if not may_crash_here(binary):
        return False
    _log.warning("Not using %s: it was built with ggml's AMX code, which crashes on this CPU; "
                 "`%s --force` builds it again", binary, install_command)
    return True


def cmake_configure_argv(source: str, build: str, plan: BuildPlan, *, cmake: str = "cmake",
                         generator: str | None = None) -> list[str]:
    """The ``cmake`` configure command line for ``plan``'s flavour (pure; nothing runs)."""
    argv = [
        cmake, "-S", source, "-B", build,
        "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        *native_cpu_argv(),
    ]
    if generator:
        argv += ["-G", generator]
    if plan.flavour == "cuda":
        if not plan.archs or not plan.nvcc:
            raise ValueError("a CUDA build needs nvcc and at least one architecture")
        argv += [
            "-DGGML_CUDA=ON",
            f"-DCMAKE_CUDA_COMPILER={plan.nvcc}",
            f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(plan.archs)}",
        ]
        if plan.toolkit is not None:  # cuBLAS and the runtime from this toolkit, no other
            argv.append(f"-DCUDAToolkit_ROOT={plan.toolkit.home}")
        if plan.no_vmm:  # no driver stub to link against: libcuda is loaded at run time
            argv.append("-DGGML_CUDA_NO_VMM=ON")
        if plan.runpath:  # the binary finds cuBLAS and the runtime without LD_LIBRARY_PATH
            # The RUNPATH is set at link time, as it will stay: otherwise CMake pads the build
            # tree's RUNPATH with an empty entry (for a rewrite at install), which the loader
            # reads as the current directory.
            dirs = ";".join(plan.runpath)
            argv += [f"-DCMAKE_BUILD_RPATH={dirs}", f"-DCMAKE_INSTALL_RPATH={dirs}",
                     "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]
    return argv


def cmake_build_argv(build: str, jobs: int, *, cmake: str = "cmake") -> list[str]:
    """The ``cmake --build`` command line: the ``llama-server`` target only."""
    return [cmake, "--build", build, "--target", "llama-server", "-j", str(jobs)]


def build_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the build: this interpreter's scripts folder first on ``PATH``, so
    a ``pip install cmake`` (or ``ninja``) in this environment is found without activating it."""
    env = dict(os.environ if base is None else base)
    scripts = sysconfig.get_path("scripts")
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    if scripts and scripts not in parts:
        parts.insert(0, scripts)
    env["PATH"] = os.pathsep.join(parts)
    return env


def missing_tools(env: Mapping[str, str]) -> list[str]:
    """What the build needs and cannot find, each with the command that installs it."""
    path = env.get("PATH", "")
    missing = []
    if shutil.which("cmake", path=path) is None:
        missing.append("cmake (`pip install cmake`, or your system's cmake package)")
    if not any(shutil.which(cxx, path=path) for cxx in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (e.g. `apt-get install g++`, or Xcode's command line "
                       "tools on macOS)")
    return missing


def install_llama_server(*, force: bool = False, jobs: int | None = None, gpu: str = "auto",
                         cuda_archs: str | None = None, cuda_home: str | None = None,
                         out: TextIO | None = None) -> Path:
    """Build ``llama-server`` of the flavour ``gpu`` asks for into the cache, unless it is
    already there; return its path.

    ``cuda_archs`` (``--cuda-arch 80,90``) names the CUDA architectures when no GPU is
    visible; ``cuda_home`` (``--cuda-home``) the CUDA toolkit to use. Without a complete
    system toolkit, ``--gpu cuda`` first installs one from NVIDIA's wheels into the cache
    (see :mod:`.cuda_toolkit`). Blocking (minutes); meant for the command line, never for the
    server's event loop. Raises ``RuntimeError`` naming what is missing, or with the failing
    step's output tail.
    """
    out = out if out is not None else sys.stdout
    try:
        plan = build_plan(gpu, cuda_archs=cuda_archs, cuda_home=cuda_home, cache=cache_root())
    except BuildFlavourError as exc:
        raise RuntimeError(str(exc)) from exc
    return install_once("llama-server", plan, cached_binary(plan.flavour), build_env(), _build,
                        force=force, jobs=jobs, out=out)


def install_once(program: str, plan: BuildPlan, target: Path, env: dict[str, str],
                 build: Callable[[BuildPlan, Path, dict[str, str], int, TextIO], Path], *,
                 force: bool, jobs: int | None, out: TextIO) -> Path:
    """What every engine build does around its compile: say the flavour, reuse the cached
    binary, name the missing tools, build one at a time (a lock; a build that waited finds
    the other's binary), install a CUDA toolkit from wheels where the plan asks for one."""
    _say(out, f"flavour {plan.flavour}: {plan.reason}")
    if target.exists() and not force and may_crash_here(target):
        _say(out, f"the cached {program} was built with ggml's AMX code, which crashes on "
                  "this CPU: building it again")
        force = True
    if target.exists() and not force:
        _say(out, f"{program} ({plan.flavour}) already built: {target}")
        return target
    missing = missing_tools(env)
    if missing:
        raise RuntimeError(f"Building {program} needs " + " and ".join(missing)
                           + ". The prebuilt engine works without a build: "
                           "pip install 'lemonade_jupyter[prebuilt]'.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent / ".build.lock", out):
        if target.exists() and not force:  # someone else built it while we waited
            _say(out, f"{program} ({plan.flavour}) already built: {target}")
            return target
        plan = _ensure_toolkit(plan, env, out)
        return build(plan, target, env, jobs or os.cpu_count() or 2, out)


def _ensure_toolkit(plan: BuildPlan, env: Mapping[str, str], out: TextIO) -> BuildPlan:
    """Install the wheels ``plan``'s CUDA toolkit still needs (once; later builds find it in
    the cache) and return the plan with the toolkit's library folders as the binary's
    RUNPATH. Another build may be installing the same toolkit: one at a time, by a lock."""
    toolkit = plan.toolkit
    if toolkit is None or not toolkit.wheels:
        return plan
    Path(toolkit.target).parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(Path(f"{toolkit.target}.lock"), out):
        fresh = cuda_toolkit.plan_toolkit(toolkit.system, Path(toolkit.target).parent,
                                          toolkit.major)
        if fresh.wheels:  # nobody installed it while we waited
            started = time.monotonic()
            try:
                cuda_toolkit.install_toolkit(
                    fresh, lambda argv, what: _run(argv, what, env, out))
            except BuildFlavourError as exc:
                raise RuntimeError(str(exc)) from exc
            _say(out, f"installed CUDA {toolkit.major} in {time.monotonic() - started:.0f} s: "
                      f"{toolkit.home}")
    home = toolkit.home
    return dataclasses.replace(plan, toolkit=dataclasses.replace(toolkit, wheels=()),
                               runpath=tuple(cuda_toolkit.library_dirs(home)),
                               no_vmm=not cuda_toolkit.has_driver_stub(home))


def _build(plan: BuildPlan, target: Path, env: dict[str, str], jobs: int, out: TextIO) -> Path:
    seconds = compile_from_sdist(LLAMA_CPP_SOURCES, plan, target, env, jobs, out,
                                 download=_download_argv)
    info = {"flavour": plan.flavour, "archs": list(plan.archs), "nvcc": plan.nvcc,
            "runpath": list(plan.runpath), "no_vmm": plan.no_vmm,
            "cuda_version": list(plan.cuda_version) if plan.cuda_version else None,
            "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "built_at": time.time(),
            "amx_left_out": bool(native_cpu_argv()),
            "build_s": round(seconds, 1)}
    (target.parent / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    _say(out, f"built llama-server ({plan.flavour}) in {seconds:.0f} s: {target}")
    return target


@dataclasses.dataclass(frozen=True)
class SdistSources:
    """An engine built from the C++ tree inside a pinned sdist on PyPI: which sdist, where the
    tree is in it, and the cmake command lines of its one server target.

    ``configure(source, build, plan, cmake=..., generator=...)`` and
    ``build(build, jobs, cmake=...)`` are the pure command-line builders of each engine."""

    program: str            # the binary the build makes and the cache keeps: "llama-server"
    project: str            # the tree, for messages: "llama.cpp"
    package: str            # the pip name of the sdist: "llama-cpp-python"
    archive_glob: str       # the downloaded archive: "llama_cpp_python-*.tar.gz"
    tree_glob: str          # the sources inside it: "llama_cpp_python-*/vendor/llama.cpp"
    configure: Callable[..., list[str]]
    build: Callable[..., list[str]]
    #: Tries the new binary before it goes into the cache (``check(binary, say)``): raises to
    #: keep it out. None: installed as built.
    check: Callable[[Path, Callable[[str], None]], None] | None = None


def sdist_download_argv(package: str, version: str, dest: str) -> list[str]:
    """``pip download`` of one pinned sdist only. Only this package as a source archive: pip
    still prepares its metadata, and with ":all:" the build backend's own needs (cmake, ninja)
    were built from source too when the ones on PATH did not suit it, which took many
    minutes."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package,
            f"{package}=={version}", "-d", dest]


def compile_from_sdist(sources: SdistSources, plan: BuildPlan, target: Path,
                       env: dict[str, str], jobs: int, out: TextIO,
                       download: Callable[[str], list[str]]) -> float:
    """Download and unpack ``sources``' sdist, configure and build its server for ``plan``,
    and put the binary at ``target`` (atomically: a reader never sees half a file). Returns
    the seconds it took; each step's failure is a RuntimeError naming the step.
    ``download(dest)`` is the ``pip download`` command line of the sdist."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"lemonade-{sources.program}-build-") as work:
        workdir = Path(work)
        _run(download(str(workdir)), f"download the {sources.package} sdist",
             env, out)
        archives = glob.glob(str(workdir / sources.archive_glob))
        if not archives:
            raise RuntimeError(f"pip download produced no {sources.package} sdist")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(workdir, filter="data")
        source = next(workdir.glob(sources.tree_glob))
        build = workdir / "build"
        cmake = shutil.which("cmake", path=env["PATH"]) or "cmake"
        generator = "Ninja" if shutil.which("ninja", path=env["PATH"]) else None
        _run(sources.configure(str(source), str(build), plan, cmake=cmake, generator=generator),
             f"configure {sources.project} ({plan.flavour})", env, out)
        _run(sources.build(str(build), jobs, cmake=cmake),
             f"build {sources.program} ({plan.flavour}, {jobs} jobs; this takes minutes)",
             env, out,
             progress=ProgressPrinter(f"lemonade-jupyter: building {sources.program}", out))
        tmp = target.with_suffix(".tmp")
        shutil.copy2(build / "bin" / sources.program, tmp)
        try:
            if sources.check is not None:
                sources.check(tmp, lambda text: _say(out, text))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return time.monotonic() - started


@contextlib.contextmanager
def _build_lock(path: Path, out: TextIO) -> Iterator[None]:
    """One build per flavour at a time (a quickstart's background build and a user's)."""
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(out, "another build of this flavour is running; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _say(out: TextIO, text: str) -> None:
    out.write(f"lemonade-jupyter: {text}\n")
    out.flush()


def _run(cmd: Sequence[str], what: str, env: Mapping[str, str], out: TextIO, *,
         progress: ProgressPrinter | None = None) -> None:
    """Run one step; its output feeds ``progress`` and only its tail is shown on failure."""
    _say(out, f"{what} ...")
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace",
                          env=dict(env)) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if progress is not None:
                progress.feed(line)
        code = proc.wait()
    if progress is not None:
        progress.done()
    if code != 0:
        raise RuntimeError(f"Could not {what} (exit {code}):\n" + "\n".join(tail))


def _download_argv(dest: str) -> list[str]:
    return sdist_download_argv("llama-cpp-python", LLAMA_CPP_PYTHON_VERSION, dest)


#: llama.cpp's server from the tree vendored in the llama-cpp-python sdist.
LLAMA_CPP_SOURCES = SdistSources(
    program="llama-server", project="llama.cpp", package="llama-cpp-python",
    archive_glob="llama_cpp_python-*.tar.gz",
    tree_glob="llama_cpp_python-*/vendor/llama.cpp", configure=cmake_configure_argv,
    build=cmake_build_argv,
    check=lambda binary, say: check_first_start(binary, default_model_path(), say))
