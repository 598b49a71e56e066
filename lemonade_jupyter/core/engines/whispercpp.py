"""The ``whispercpp`` recipe: one whisper-server process per loaded transcription model.

The router starts it like ``llama-server`` (:class:`..backend.Backend`: its own loopback port
and key, ``/health``, SIGTERM), from the command line built here (pure data, unit tested
without spawning). The process is always our wrapper, ``lemonade-whisper-server``
(:mod:`.whisper_server`), because it is what checks the key; which engine does the work:

1. whisper.cpp's native ``whisper-server`` at ``$LEMONADE_WHISPER_SERVER``, when set (an
   explicit choice: pointing nowhere is an error naming it);
2. the native build in the cache (:func:`.whisper_install.cached_whisper_server`), CUDA
   first when a GPU is visible, made by ``lemonade-jupyter install-whisper-server`` (passed
   over, with a warning, when it was built with ggml's AMX code on a CPU where that crashes:
   :func:`.install.passed_over`);
3. in process, through the ``pywhispercpp`` wheel (the ``prebuilt`` extra): the CPU engine
   that makes a fresh machine work without a compiler.

A native build is used from the next start on, like a native ``llama-server``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ...errors import EngineMissingError
from ..catalog import ModelSpec
from ..options import LoadOptions
from ..ports import LOOPBACK
from .gpu import gpu_visible
from .install import passed_over
from .whisper_args import API_KEY_ENV
from .whisper_install import INSTALL_WHISPER_COMMAND, cached_whisper_server

#: The module our wrapper runs as (``python -m``), so it is always this very package's copy.
SERVER_MODULE = "lemonade_jupyter.core.engines.whisper_server"
PREBUILT_HINT = "pip install 'lemonade_jupyter[prebuilt]'"


@dataclass(frozen=True)
class WhisperEngineInfo:
    """The engine a transcription backend runs: ``flavour`` is ``pywhispercpp`` (in process),
    ``cpu``/``cuda`` (our native builds) or ``custom`` (``$LEMONADE_WHISPER_SERVER``);
    ``native`` is the native binary ("" in process); ``source`` says where it was found."""

    flavour: str
    native: str
    source: str

    @property
    def path(self) -> str:
        return self.native or SERVER_MODULE

    @property
    def offload(self) -> bool:
        return self.flavour == "cuda"

    def to_json(self) -> dict[str, object]:
        return {"flavour": self.flavour, "path": self.path, "offload": self.offload,
                "source": self.source}


def pywhispercpp_available() -> bool:
    """The ``pywhispercpp`` wheel is importable (nothing is imported here)."""
    return importlib.util.find_spec("pywhispercpp") is not None


def find_whisper_engine(*, gpu: bool | None = None) -> WhisperEngineInfo:
    """The engine the next transcription backend starts with (order in the module's
    docstring). Raises EngineMissingError naming the fixes when there is none."""
    explicit = os.environ.get("LEMONADE_WHISPER_SERVER")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise EngineMissingError(
                f"whisper-server from $LEMONADE_WHISPER_SERVER ({explicit}) is not an "
                "executable file. Fix it, or unset it to use a native build or pywhispercpp.")
        return WhisperEngineInfo("custom", explicit, "$LEMONADE_WHISPER_SERVER")
    has_gpu = gpu_visible() if gpu is None else gpu
    for flavour in (("cuda", "cpu") if has_gpu else ("cpu",)):
        binary = cached_whisper_server(flavour)
        if (os.path.isfile(binary) and os.access(binary, os.X_OK)
                and not passed_over(binary, INSTALL_WHISPER_COMMAND)):
            return WhisperEngineInfo(flavour, str(binary), "cache")
    if pywhispercpp_available():
        return WhisperEngineInfo("pywhispercpp", "", "prebuilt")
    raise EngineMissingError(
        "No whisper engine: install the prebuilt one, no compiler needed: "
        f"{PREBUILT_HINT} (pywhispercpp); or run `{INSTALL_WHISPER_COMMAND}` to build "
        "whisper.cpp's whisper-server from the sources on PyPI.")


@dataclass(frozen=True)
class WhisperCppEngine:
    """Builds ``lemonade-whisper-server`` command lines; holds no process state.

    The same interface as :class:`.llamacpp.LlamaCppEngine` (``argv``, ``env``), which is all
    :class:`..backend.Backend` asks of an engine."""

    process_name: ClassVar[str] = "whisper-server"
    info: WhisperEngineInfo
    threads: int | None = None
    python: str = sys.executable

    def argv(self, spec: ModelSpec, options: LoadOptions, *, port: int,
             sleep_idle_seconds: int | None = None) -> list[str]:
        """The full command line for ``spec`` on ``port``; the API key goes in the
        environment. ``options`` (context, parallel, llama.cpp flags) do not apply to a
        whisper model and are not passed on."""
        del options, sleep_idle_seconds
        argv = [self.python, "-m", SERVER_MODULE, "-m", spec.checkpoint,
                "--host", LOOPBACK, "--port", str(port)]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        if self.info.native:
            argv += ["--native", self.info.native]
        return argv

    @staticmethod
    def env(api_key: str) -> dict[str, str]:
        """The backend's environment: its key, and this package first on ``PYTHONPATH`` (the
        wrapper must be the router's own copy, installed or not)."""
        env = dict(os.environ)
        env[API_KEY_ENV] = api_key
        root = str(Path(__file__).resolve().parents[3])
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
        return env
