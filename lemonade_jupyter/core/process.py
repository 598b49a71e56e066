"""Spawning and stopping child processes so that none outlives the router.

Each backend runs in its own session (process group), so a stop reaches every process it forked.
On Linux each child also asks the kernel for ``SIGKILL`` when its parent *thread* dies
(``PR_SET_PDEATHSIG``), which covers a ``SIGKILL`` of the Jupyter server where no Python code runs.
The signal is tied to the thread that forked the child, so spawns must happen on a long-lived
thread: the server's main loop thread, or the embedded router's own thread (never a worker pool).

A backend's output goes through a pipe into a size-capped log file (:func:`spawn_logged`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from .capped_log import CappedLog, LogPump

_PR_SET_PDEATHSIG = 1


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this thread dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolve prctl in the parent: after fork only async-signal-safe work is allowed.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    getppid = os.getppid
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec


async def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], log: IO[bytes]
) -> asyncio.subprocess.Process:
    """Start ``argv`` in a new session with a parent-death signal; output goes to ``log``."""
    preexec = parent_death_preexec()  # per spawn: it captures the current pid (forks of us differ)
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
        preexec_fn=preexec,
    )


async def spawn_logged(
    argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, max_log_bytes: int
) -> tuple[asyncio.subprocess.Process, LogPump]:
    """:func:`spawn` with the output going through a pipe into a capped log file
    (:mod:`.capped_log` says why a pipe); returns the process and the running pump."""
    capped = CappedLog(log_path, max_log_bytes)
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "wb", closefd=True) as child_end:
            proc = await spawn(argv, env=env, log=child_end)
    except BaseException:
        os.close(read_fd)
        capped.close()
        raise
    pump = LogPump(read_fd, capped)
    pump.start()
    return proc, pump


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; a vanished group is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def terminate(proc: asyncio.subprocess.Process, grace_s: float) -> int:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL; always reaps. Returns the code."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        # A stopped process (SIGSTOP, a debugger, the watchdog's "hung" case) keeps SIGTERM
        # pending until it runs again, so without this every stop of it waited the whole
        # grace period before the SIGKILL.
        signal_group(proc.pid, signal.SIGCONT)
        try:
            return await asyncio.wait_for(proc.wait(), grace_s)
        except asyncio.TimeoutError:
            pass
    signal_group(proc.pid, signal.SIGKILL)
    code = await proc.wait()
    # The leader is gone; make sure nothing it forked is left in the group either.
    signal_group(proc.pid, signal.SIGKILL)
    return code
