"""Backend processes (real ``llama-server`` or the fake one) and zombies below a process.

Backends started by a test are its children (a router on the test's own loop or thread) or its
grandchildren (under a Jupyter server subprocess); both are found by walking the process tree.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil

#: How long the after-test check waits for zombies to be reaped and backends to exit.
LEFTOVER_DEADLINE_S = 5.0


def is_backend(p: psutil.Process) -> bool:
    """True for a real or fake llama-server process, or a whisper engine."""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return ("llama-server" in cmd or "fake_llama_server" in cmd
            or "engines.whisper_server" in cmd)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    return not alive(pid)


def unreaped(pid: int) -> bool:
    """True while ``pid`` has an entry in the process table: running, or a zombie nobody
    has reaped yet."""
    try:
        psutil.Process(pid).status()
        return True
    except psutil.NoSuchProcess:
        return False


def _descendants(parent: int | None) -> list[psutil.Process]:
    try:
        return psutil.Process(parent if parent is not None else os.getpid()).children(
            recursive=True)
    except psutil.NoSuchProcess:
        return []


def backend_children(parent: int | None = None) -> list[psutil.Process]:
    """Running (non-zombie) backend processes below ``parent`` (default: this process)."""
    out = []
    for p in _descendants(parent):
        try:
            if is_backend(p) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def backend_pids(parent: int | None = None) -> set[int]:
    """The pids of :func:`backend_children`."""
    return {p.pid for p in backend_children(parent)}


def zombies_below(parent: int | None = None) -> list[int]:
    """Zombie processes below ``parent`` (default: this process)."""
    found = []
    for p in _descendants(parent):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_no_leftovers(before: set[int], timeout: float = LEFTOVER_DEADLINE_S,
                        parent: int | None = None) -> None:
    """Wait up to ``timeout`` seconds until no zombie is below ``parent`` and no backend runs
    there except those in ``before``; fail naming what is still there when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        zombies = zombies_below(parent)
        leftover = sorted(backend_pids(parent) - before)
        if not zombies and not leftover:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert not zombies, f"zombie children still there after {timeout} s: {zombies}"
    assert not leftover, f"backend processes still running after {timeout} s: {leftover}"


@dataclass
class ProcessWatcher:
    """Remembers every backend pid ever seen below a process (sampled by the caller)."""

    parent: int
    seen: set[int] = field(default_factory=set)

    def sample(self) -> list[psutil.Process]:
        procs = backend_children(self.parent)
        self.seen.update(p.pid for p in procs)
        return procs

    def survivors(self) -> list[int]:
        return [pid for pid in self.seen if alive(pid)]
