"""Starting a transcription backend (recipe ``whispercpp``): the launcher's whisper branch.

Kept beside :mod:`.launcher` rather than inside it so that the llama.cpp path (placement,
tensor split, GPU buffer logs) and the whisper one stay apart. Everything after the command
line is shared: the backend is a :class:`.backend.Backend` like any other, so it gets its own
loopback port and key, the ``/health`` readiness probe, the capped log, the clean stop, the
watchdog, crash reloads that keep its pin, and its slot in the ``transcription`` pool. Its
memory is the process's RSS, measured like a llama-server's once it serves.

Downsizing (an idle model releases its memory and keeps its slot) means the same as for
llama-server: the process is stopped and started again on the next request. A whisper
model has no context or cache to shrink, so there is no partial downsize.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from .backend import Backend
from .capped_log import MIB
from .catalog import ModelSpec
from .engines.whispercpp import WhisperCppEngine, WhisperEngineInfo, find_whisper_engine
from .options import LoadOptions
from .settings import RouterSettings

WHISPER_RECIPE = "whispercpp"


def whisper_engine() -> WhisperEngineInfo:
    """The whisper engine the next start would use (EngineMissingError when none)."""
    return find_whisper_engine()


async def start_whisper(spec: ModelSpec, options: LoadOptions, settings: RouterSettings, *,
                        http: httpx.AsyncClient,
                        log_dir: Path) -> tuple[Backend, WhisperEngineInfo]:
    """One attempt: spawn the whisper backend and return once it serves (Backend.start's
    errors); a failed start leaves nothing running."""
    info = whisper_engine()
    engine = WhisperCppEngine(info, threads=settings.backend_threads)
    backend = Backend(engine, spec, options, http=http, log_dir=log_dir,
                      ready_timeout_s=settings.ready_timeout_s,
                      stop_grace_s=settings.stop_grace_s,
                      max_log_bytes=settings.backend_log_max_mib * MIB)
    try:
        await backend.start()
    except BaseException:
        await backend.stop()
        raise
    return backend, info
