"""Which engine the router starts: the lookup order, and what ``/health`` says about it.

Order (the first that exists wins):

1. ``c.LemonadeApp.llama_server_path`` (the configured path),
2. ``$LEMONADE_LLAMA_SERVER``,
3. ``llama-server`` on ``PATH``,
4. the native CUDA build in the cache (:func:`.install.cached_binary`), only when an NVIDIA
   GPU is visible (:func:`.gpu.gpu_visible`),
5. the native CPU build in the cache,
6. the prebuilt engine (:mod:`.prebuilt_server`), when the ``xllamacpp`` wheel is installed
   (and ``$LEMONADE_PREBUILT`` does not turn it off).

Why this order: the first two are explicit choices, so they win, and when one of them points
nowhere that is an error naming the setting (not a silent fallback). A ``llama-server`` on
``PATH`` was put there by its owner on purpose. Then come our own builds, the CUDA one first
because with a GPU it is the fast one, but only with a GPU (without one it cannot start).
The prebuilt engine comes last: it is what makes a fresh machine work without a compiler,
and it is the slower engine (a generic CPU build), so a native build, once
``lemonade-jupyter install-llama-server`` has made one, is used from the next start on, also
by a router that is already running (the lookup runs before every start).

What an engine can do comes from the engine itself (:mod:`.probe`: ``--list-devices`` and
``--version``, asked once per binary): :func:`find_engine` attaches the answer when there is
one, and until then says what the name suggests (our CUDA build with a visible GPU offloads;
anything else does not). The router awaits the probe before it places a model, so placement
and fit always decide on the engine's own answer. The prebuilt engine does not take those
flags; it is answered here without running it (:func:`prebuilt_caps`).

Everything here costs a few ``stat`` calls and a directory listing (about 0.1 ms), plus, once
per cache and interpreter, writing a five-line launcher file, so it may run on the router's
event loop.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import EngineMissingError
from . import probe
from .gpu import gpu_visible
from .install import INSTALL_COMMAND, cache_root, cached_binary, passed_over
from .prebuilt_server import PROG as PREBUILT_COMMAND

#: How to get the prebuilt engine (named in messages).
PREBUILT_HINT = "pip install 'lemonade_jupyter[prebuilt]'"


@dataclass(frozen=True)
class EngineInfo:
    """The engine a backend runs (or would run): ``flavour`` is ``cuda`` or ``cpu`` (our
    native builds), ``prebuilt`` (xllamacpp) or ``custom`` (a binary we did not build, from a
    setting or ``PATH``); ``offload`` is True when it is known to run the model on a GPU;
    ``source`` says which step of the lookup found it; ``caps`` is what the engine said about
    its backends and devices (None: not asked yet), and once it is known ``offload`` is
    whether it sees a device."""

    path: str
    flavour: str
    offload: bool
    source: str
    caps: probe.EngineCaps | None = None

    def to_json(self) -> dict[str, Any]:
        caps = self.caps
        return {"flavour": self.flavour, "path": self.path, "offload": self.offload,
                "source": self.source,
                "backends": list(caps.backends) if caps else None,
                "devices": [d.to_json() for d in caps.devices] if caps else None,
                "version": caps.version if caps else None,
                "probe_error": caps.error if caps else None}


def _engine(path: str, flavour: str, guess: bool, source: str) -> EngineInfo:
    """The engine at ``path``, with the probe's answer when there is one (else ``guess``,
    what its name suggests)."""
    if flavour == "prebuilt":
        caps = prebuilt_caps(guess)
        return EngineInfo(path, flavour, guess, source, caps)
    caps = probe.cached(path)
    if caps is None:
        return EngineInfo(path, flavour, guess, source)
    return EngineInfo(path, flavour, caps.offloads, source, caps)


def prebuilt_caps(offloads: bool) -> probe.EngineCaps:
    """The prebuilt engine's answer, given here because its wrapper takes neither
    ``--list-devices`` nor ``--version``: the xllamacpp wheel on PyPI is a CPU build (no
    device). A CUDA wheel names its backend; its devices are not listed."""
    return probe.EngineCaps(("CUDA", "CPU") if offloads else ("CPU",), (), _xllamacpp_version())


@functools.cache
def _xllamacpp_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"xllamacpp {version('xllamacpp')}"
    except PackageNotFoundError:
        return None


def _executable(path: str | os.PathLike[str] | None) -> bool:
    if not path:
        return False
    return os.path.isfile(path) and os.access(path, os.X_OK)


def prebuilt_disabled() -> bool:
    """``$LEMONADE_PREBUILT=0`` (or ``off``/``no``/``false``) leaves the prebuilt engine out
    of the lookup: a machine that must run a native build, or a test of "no engine at all"."""
    return os.environ.get("LEMONADE_PREBUILT", "").strip().lower() in ("0", "off", "no", "false")


def prebuilt_available() -> bool:
    """True when the ``xllamacpp`` wheel is importable by this interpreter (nothing is
    imported: the wheel's library is 100 MB and only the engine's own process loads it) and
    the prebuilt engine is not turned off."""
    return not prebuilt_disabled() and importlib.util.find_spec("xllamacpp") is not None


def prebuilt_launcher() -> str | None:
    """The executable that runs :mod:`.prebuilt_server`, or None without ``xllamacpp``.

    The ``lemonade-prebuilt-llama-server`` console script of this interpreter's environment,
    when pip installed it and this package is the installed one. Otherwise (a source tree on
    ``PYTHONPATH``, or no console script) a small launcher written once into the cache, which
    runs this interpreter on this very copy of the package, so the engine's wrapper is always
    the router's own version. Either way the process's command line names ``llama-server``,
    like the native engine's, for anyone looking for backends.
    """
    if not prebuilt_available():
        return None
    if _package_root() in _site_folders():
        for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
            candidate = os.path.join(folder, PREBUILT_COMMAND)
            if _executable(candidate):
                return candidate
    return str(_write_launcher(_package_root()))


@functools.cache
def _package_root() -> str:
    """The folder that holds the ``lemonade_jupyter`` package the router runs."""
    return str(Path(__file__).resolve().parents[3])


@functools.cache
def _site_folders() -> set[str]:
    return {str(Path(sysconfig.get_path(k)).resolve()) for k in ("purelib", "platlib")}


#: Launchers this process wrote or checked: path -> their text (the lookup runs per start and
#: per ``/health``; reading the file back each time is not needed while it is there).
_checked: dict[Path, str] = {}


def _write_launcher(root: str) -> Path:
    tag = hashlib.sha256(f"{sys.executable}\0{root}".encode()).hexdigest()[:12]
    path = cache_root() / "prebuilt" / tag / PREBUILT_COMMAND
    text = (f"#!{sys.executable}\n"
            "import sys\n"
            f"sys.path.insert(0, {root!r})\n"
            "from lemonade_jupyter.core.engines.prebuilt_server import main\n"
            "sys.exit(main())\n")
    if _checked.get(path) == text and os.access(path, os.X_OK):
        return path
    try:
        if path.read_text() == text and os.access(path, os.X_OK):
            _checked[path] = text
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)
    _checked[path] = text
    return path


def prebuilt_offloads() -> bool:
    """True when the installed xllamacpp is one of its CUDA wheels (which ship their CUDA
    libraries next to the extension); the wheel on PyPI is the CPU one."""
    spec = importlib.util.find_spec("xllamacpp")
    if spec is None or not spec.submodule_search_locations:
        return False
    folders = list(spec.submodule_search_locations)
    folders += [os.path.join(os.path.dirname(f), "xllamacpp.libs") for f in folders]
    for folder in folders:
        try:
            if any("cuda" in name.lower() or "cublas" in name.lower()
                   for name in os.listdir(folder)):
                return True
        except OSError:
            continue
    return False


def classify(path: str, *, gpu: bool) -> tuple[str, bool]:
    """``(flavour, offload)`` of an engine binary, from where it is and what it is called;
    ``offload`` is the guess that holds until the engine's own answer (:mod:`.probe`)."""
    if os.path.basename(path) == PREBUILT_COMMAND:
        return "prebuilt", gpu and prebuilt_offloads()
    real = os.path.realpath(path)
    for flavour in ("cuda", "cpu"):
        if real == os.path.realpath(cached_binary(flavour)):
            return flavour, gpu and flavour == "cuda"
    return "custom", False


def find_engine(configured: str | None = None, *, gpu: bool | None = None) -> EngineInfo:
    """The engine the next backend starts with (see the module's docstring for the order).

    ``gpu``: whether an NVIDIA GPU is visible (None: look). Raises EngineMissingError naming
    the fix when there is none, or when an explicit setting points nowhere.
    """
    has_gpu = gpu_visible() if gpu is None else gpu
    explicit = (("c.LemonadeApp.llama_server_path", configured or None),
                ("$LEMONADE_LLAMA_SERVER", os.environ.get("LEMONADE_LLAMA_SERVER") or None))
    for source, path in explicit:
        if path is None:
            continue
        if not _executable(path):
            # An explicit setting that points nowhere is a mistake worth naming.
            raise EngineMissingError(
                f"llama-server from {source} ({path}) is not an executable file. "
                f"Fix the setting, or unset it to use a native build "
                f"(`{INSTALL_COMMAND}`) or the prebuilt engine ({PREBUILT_HINT}).")
        return _engine(path, *classify(path, gpu=has_gpu), source)
    on_path = shutil.which("llama-server")
    if on_path:
        return _engine(on_path, *classify(on_path, gpu=has_gpu), "PATH")
    cuda = cached_binary("cuda")
    if has_gpu and _executable(cuda) and not passed_over(cuda, INSTALL_COMMAND):
        return _engine(str(cuda), "cuda", True, "cache")
    cpu = cached_binary("cpu")
    if _executable(cpu) and not passed_over(cpu, INSTALL_COMMAND):
        return _engine(str(cpu), "cpu", False, "cache")
    launcher = prebuilt_launcher()
    if launcher:
        return _engine(launcher, "prebuilt", has_gpu and prebuilt_offloads(), "prebuilt")
    unused = (f" ({cuda} exists, but no NVIDIA GPU is visible)" if _executable(cuda) else "")
    prebuilt = ("the prebuilt engine (turned off by $LEMONADE_PREBUILT)" if prebuilt_disabled()
                else "the prebuilt engine (xllamacpp is not installed)")
    raise EngineMissingError(
        "llama-server was not found (looked at c.LemonadeApp.llama_server_path, "
        f"$LEMONADE_LLAMA_SERVER, PATH, {cpu.parent.parent.parent}{unused} and {prebuilt}). "
        f"Install the prebuilt engine, no compiler needed: {PREBUILT_HINT}; or run "
        f"`{INSTALL_COMMAND}` to build a native one from the llama.cpp sources on PyPI "
        "(about 8 minutes on 2 cores).")


def find_llama_server(configured: str | None = None) -> str:
    """The path of the engine :func:`find_engine` chooses (an executable that takes
    llama-server's command line)."""
    return find_engine(configured).path
