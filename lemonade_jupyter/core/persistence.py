"""The router's state file: remembered pins, the loaded set and runtime settings.

Kept in ``<data_dir>/router_state.json`` and rewritten after every change, off the event loop,
by one worker thread so writes land in order. :class:`DataDirLock` keeps a second router off a
folder that a live one uses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
from pathlib import Path
from typing import Any

from .state_files import read_json_or_quarantine, write_json_atomic


class RouterStateStore:
    """Reads the state once at start and writes snapshots in order afterwards."""

    def __init__(self, data_dir: Path | None) -> None:
        self.path = data_dir / "router_state.json" if data_dir else None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lemonade-state")

    def read(self) -> dict[str, Any]:
        """The last saved state, or ``{}`` (a corrupt file is moved aside)."""
        if self.path is None:
            return {}
        return read_json_or_quarantine(self.path, dict) or {}

    def save(self, snapshot: dict[str, Any]) -> asyncio.Future[None] | None:
        """Queue a write of ``snapshot``; returns a future the caller may await."""
        if self.path is None:
            return None
        return asyncio.get_running_loop().run_in_executor(
            self._pool, write_json_atomic, self.path, snapshot
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class DataDirInUseError(RuntimeError):
    """Another live router holds the lock of a data folder."""


class DataDirLock:
    """One router per data folder, across processes: an exclusive ``flock`` on
    ``<data_dir>/router.lock``, held from :meth:`acquire` until :meth:`release` (or the
    holder's death: the kernel drops a dead process's locks, so a crash leaves nothing stale).

    The file holds the holder's pid, so a refusal can say who has the folder.
    """

    NAME = "router.lock"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / self.NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """The pid written by the current holder ('' when unknown)."""
        try:
            return self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def acquire(self) -> None:
        """Take the lock now or raise :class:`DataDirInUseError` naming the folder and holder."""
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = self.holder()
            raise DataDirInUseError(
                f"Another lemonade router{f' (pid {pid})' if pid else ''} already uses the data "
                f"folder {self.data_dir}; two routers on one folder would restore each other's "
                "models and overwrite each other's state. Stop the other one, or give this one "
                "its own folder."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (idempotent). The file stays: removing it would race a waiter."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
