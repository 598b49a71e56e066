"""The router's state file: remembered pins, the loaded set and runtime settings.

Kept in ``<data_dir>/router_state.json`` and rewritten after every change, off the event loop,
by one worker thread so writes land in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
