"""The ``llamacpp`` recipe: one ``llama-server`` process per loaded model.

Which binary runs is decided by :func:`.lookup.find_engine` (configured path,
``$LEMONADE_LLAMA_SERVER``, ``PATH``, our native builds, then the prebuilt engine; the order
and its reasons are in :mod:`.lookup`). Every engine takes llama-server's command line, which
is pure data here so it can be unit tested without spawning.

The router's own flags come first, and those that name a file or an address (``--model``,
``--mmproj``, ``--port``, ``--host``) before any other: the prebuilt engine takes such flags
only at the head of its command line. The load's ``llamacpp_args`` come last, as the words
:func:`..engine_flags.check_llamacpp_args` lets through under the engine's policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ..catalog import ModelSpec
from ..engine_flags import STRICT, ArgsPolicy, check_llamacpp_args
from ..options import LoadOptions
from ..ports import LOOPBACK
from .install import INSTALL_COMMAND
from .lookup import EngineInfo, find_engine, find_llama_server

__all__ = ["DEFAULT_CTX_SIZE", "INSTALL_HINT", "LOOPBACK", "EngineInfo", "LlamaCppEngine",
           "find_engine", "find_llama_server"]

INSTALL_HINT = INSTALL_COMMAND
DEFAULT_CTX_SIZE = 2048


@dataclass(frozen=True)
class LlamaCppEngine:
    """Builds ``llama-server`` command lines; holds no process state."""

    process_name: ClassVar[str] = "llama-server"
    binary: str
    #: ``--threads`` for every backend; None lets llama.cpp choose (all cores). On a small
    #: shared machine several backends each spinning on all cores slow each other down a lot
    #: (llama.cpp's worker threads busy-wait), so this is configurable:
    #: the ``backend_threads`` setting (whose default may come from its environment variable).
    threads: int | None = None
    #: What the lookup knows about ``binary`` (flavour, offload), for ``/health``.
    info: EngineInfo | None = None
    #: How ``llamacpp_args`` are checked; strict unless the owner allowed any flag.
    args_policy: ArgsPolicy = STRICT

    def argv(
        self,
        spec: ModelSpec,
        options: LoadOptions,
        *,
        port: int,
        sleep_idle_seconds: int | None = None,
    ) -> list[str]:
        """The full command line for ``spec`` on ``port``; the API key goes in the environment.

        Raises InvalidRequestError when ``options.llamacpp_args`` has a flag the policy refuses
        (they were checked at the API already; this keeps any other path honest).
        """
        user_words = check_llamacpp_args(options.llamacpp_args, self.args_policy)
        args = [self.binary, "--model", spec.checkpoint]
        if spec.mmproj:
            args += ["--mmproj", spec.mmproj]
        args += [
            "--port", str(port),
            "--host", LOOPBACK,
            "--ctx-size", str(options.ctx_size or DEFAULT_CTX_SIZE),
            "--no-webui",
        ]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if spec.type == "embedding":
            args.append("--embeddings")
        elif spec.type == "reranking":
            args.append("--reranking")
        if options.parallel is not None:
            args += ["--parallel", str(options.parallel)]
        if sleep_idle_seconds is not None:
            args += ["--sleep-idle-seconds", str(sleep_idle_seconds)]
        return args + user_words

    @staticmethod
    def env(api_key: str) -> dict[str, str]:
        """Environment of a backend: the API key travels here, not in argv (``ps`` shows argv)."""
        env = dict(os.environ)
        env["LLAMA_API_KEY"] = api_key
        return env
