"""One start of a freshly built ``llama-server`` on the default model, before it is installed.

Why: a build can compile and still crash on its first decode on this machine's CPU. The CPU
build of llama-cpp-python 0.3.36's tree did, on a Xeon with AMX: SIGSEGV in ggml's AMX matrix
multiply during llama-server's warm-up, on every load. Installed into the cache, the router
prefers such a binary to the prebuilt engine, and every model then fails to load. llama-server
answers ``/health`` with 200 only after that warm-up decode, so one start that gets there has
computed once on this CPU (about a second for the default model).

A crash, or an exit before answering, keeps the binary out of the cache (the error names the
exit and the log's last lines); a start that neither answers nor exits within the time allowed
is stopped and the binary installed with a warning (a slow machine is not a broken build).
Without the default model there is nothing to try it on: it is said, and the binary installed.
Blocking, like the build around it: for the command line, never the server's event loop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..ports import LOOPBACK, free_port

#: How long the first start may take before it is given up (not a failure).
FIRST_START_TIMEOUT_S = 120.0
#: How often ``/health`` is asked while it starts.
POLL_S = 0.2
#: Log lines the error shows.
TAIL_LINES = 15


class FirstStartError(RuntimeError):
    """The new binary exited (or crashed) before it served the default model."""


def describe_exit(code: int) -> str:
    """``signal 11 (SIGSEGV)`` for a negative return code, ``status N`` otherwise."""
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/health", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_first_start(binary: Path, model: str, say: Callable[[str], None], *,
                      timeout_s: float = FIRST_START_TIMEOUT_S) -> None:
    """Start ``binary`` on ``model`` until it answers ``/health``; raise FirstStartError if it
    exits first. See the module docstring for what passes."""
    if not model or not os.path.isfile(model):
        say("no default model to try the new llama-server on: installed untried")
        return
    say(f"trying the new llama-server on the default model ({Path(model).name}) ...")
    port = free_port()
    argv = [str(binary), "-m", model, "--host", LOOPBACK, "--port", str(port),
            "--threads", "1", "--ctx-size", "256"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    log.seek(0)
                    lines = log.read().decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
                    raise FirstStartError(
                        f"the new llama-server exited with {describe_exit(code)} while loading "
                        f"the default model, before it answered; it is not installed (the "
                        f"prebuilt engine still works). Its last lines:\n" + "\n".join(lines))
                if _healthy(port):
                    say("the new llama-server served the default model")
                    return
                time.sleep(POLL_S)
            say(f"the new llama-server did not answer within {timeout_s:.0f} s: installed "
                "untried")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
