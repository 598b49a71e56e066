"""The ``llamacpp`` recipe: one ``llama-server`` process per loaded model.

Which binary runs is decided by :func:`.lookup.find_engine` (configured path,
``$LEMONADE_LLAMA_SERVER``, ``PATH``, our native builds, then the prebuilt engine; the order
and its reasons are in :mod:`.lookup`). Every engine takes llama-server's command line, which
is pure data here so it can be unit tested without spawning.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from ..catalog import ModelSpec
from ..options import LoadOptions
from ..ports import LOOPBACK
from .install import INSTALL_COMMAND
from .lookup import EngineInfo, find_engine, find_llama_server

__all__ = ["DEFAULT_CTX_SIZE", "INSTALL_HINT", "LOOPBACK", "EngineInfo", "LlamaCppEngine",
           "find_engine", "find_llama_server"]

INSTALL_HINT = INSTALL_COMMAND
DEFAULT_CTX_SIZE = 2048


def _env_threads() -> int | None:
    raw = os.environ.get("LEMONADE_BACKEND_THREADS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


@dataclass(frozen=True)
class LlamaCppEngine:
    """Builds ``llama-server`` command lines; holds no process state."""

    binary: str
    #: ``--threads`` for every backend; None lets llama.cpp choose (all cores). On a small
    #: shared machine several backends each spinning on all cores slow each other down a lot
    #: (llama.cpp's worker threads busy-wait), so this is configurable:
    #: ``c.LemonadeApp.backend_threads`` or ``$LEMONADE_BACKEND_THREADS``.
    threads: int | None = None
    #: What the lookup knows about ``binary`` (flavour, offload), for ``/health``.
    info: EngineInfo | None = None

    def argv(
        self,
        spec: ModelSpec,
        options: LoadOptions,
        *,
        port: int,
        sleep_idle_seconds: int | None = None,
    ) -> list[str]:
        """The full command line for ``spec`` on ``port``; the API key goes in the environment."""
        args = [
            self.binary,
            "--model", spec.checkpoint,
            "--port", str(port),
            "--host", LOOPBACK,
            "--ctx-size", str(options.ctx_size or DEFAULT_CTX_SIZE),
            "--no-webui",
        ]
        threads = self.threads or _env_threads()
        if threads:
            args += ["--threads", str(threads)]
        if spec.type == "embedding":
            args.append("--embeddings")
        elif spec.type == "reranking":
            args.append("--reranking")
        if options.parallel is not None:
            args += ["--parallel", str(options.parallel)]
        if spec.mmproj:
            args += ["--mmproj", spec.mmproj]
        if sleep_idle_seconds is not None:
            args += ["--sleep-idle-seconds", str(sleep_idle_seconds)]
        if options.llamacpp_args:
            args += shlex.split(options.llamacpp_args)
        return args

    @staticmethod
    def env(api_key: str) -> dict[str, str]:
        """Environment of a backend: the API key travels here, not in argv (``ps`` shows argv)."""
        env = dict(os.environ)
        env["LLAMA_API_KEY"] = api_key
        return env
