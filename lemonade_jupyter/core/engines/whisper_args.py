"""The command line every whisper engine takes: whisper.cpp's ``whisper-server``'s own.

``-m MODEL --host H --port P --threads N`` mean what they mean to ``whisper-server``. The API
key is ours: ``--api-key K`` or, better (``ps`` shows a command line), ``$WHISPER_API_KEY``,
the way llama-server takes ``$LLAMA_API_KEY``. whisper.cpp's own server has no API key at
all, so our wrapper (:mod:`.whisper_server`) checks it, and with ``--native BINARY`` runs
that server behind itself (:mod:`.whisper_native`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

PROG = "lemonade-whisper-server"
#: Where the key travels from the router (the environment, never the command line).
API_KEY_ENV = "WHISPER_API_KEY"


@dataclass(frozen=True)
class WhisperArgs:
    """A parsed whisper-server command line."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 4
    api_key: str = ""
    #: whisper.cpp's native ``whisper-server`` to run behind this wrapper ("" for ours).
    native: str = ""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=(
        "whisper.cpp's whisper-server HTTP API (/health, /inference) for one ggml model, "
        "with an API key."))
    p.add_argument("-m", "--model", required=True, help="the whisper.cpp ggml-*.bin file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("-t", "--threads", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--api-key", default="",
                   help=f"the key every request but /health must carry (or ${API_KEY_ENV})")
    p.add_argument("--native", default="", metavar="BINARY",
                   help="serve through whisper.cpp's own whisper-server at BINARY")
    return p


def parse_args(argv: Sequence[str], env: dict[str, str] | None = None) -> WhisperArgs:
    """Parse ``argv`` (without the program name); argparse exits on a bad line."""
    ns = _parser().parse_args(list(argv))
    env = dict(os.environ) if env is None else env
    if ns.threads < 1 or not 0 < ns.port < 65536:
        _parser().error("--threads must be >= 1 and --port in 1..65535")
    return WhisperArgs(model=ns.model, host=ns.host, port=ns.port, threads=ns.threads,
                       api_key=ns.api_key or env.get(API_KEY_ENV, ""), native=ns.native)


def native_argv(binary: str, model: str, port: int, threads: int) -> list[str]:
    """The command line of whisper.cpp's ``whisper-server`` behind our wrapper: loopback only,
    on a port of its own."""
    return [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-t", str(threads)]
