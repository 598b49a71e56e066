"""A daemon thread that calls one function every ``interval`` seconds, woken early on demand.

The dashboard refreshes from a thread because ipykernel 7 runs no asyncio tasks between cells.
:meth:`Poller.wake` makes the next call come at once (after a click, so the table shows its
result); :meth:`Poller.stop` ends the thread within one call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Poller"]


class Poller:
    """Calls ``tick(n)`` (n = 1, 2, ...) every ``interval`` seconds on a thread named ``name``."""

    def __init__(self, tick: Callable[[int], None], interval: float, name: str) -> None:
        self.interval = float(interval)
        self._tick = tick
        self._name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._ticks = 0
        #: The running thread (the last one started, until ``stop``).
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        """Start the thread; idempotent."""
        if self.running:
            return
        self._stop.clear()
        self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """Make the next tick come now."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` for it (not when called from it)."""
        self._stop.set()
        self._wake.set()
        thread, self.thread = self.thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._ticks += 1
            self._tick(self._ticks)
