"""The dashboard's clicks that take time (unload, load, a log), run on worker threads.

A click must not block the kernel's comm handler, so each action runs on a thread of its own;
:class:`ActionWorkers` keeps them, so closing the dashboard can wait for them. A load shows its
progress (an indeterminate bar and the seconds so far, with a warning when it will evict a
pinned model) in a status widget, then its outcome. The dashboard gets the outcome through
``done(error)`` and refreshes; the workers decide nothing.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..errors import ClientError

__all__ = ["ActionWorkers"]


class ActionWorkers:
    """Runs actions on daemon threads; shows progress and outcomes in ``status``."""

    def __init__(self, status: widgets.HTML) -> None:
        self.status = status
        self._workers: list[threading.Thread] = []

    def run(self, name: str, work: Callable[[], None]) -> None:
        """Run ``work`` on a thread of its own, kept until :meth:`wait` sees it end."""
        worker = threading.Thread(target=work, name=name, daemon=True)
        self._workers.append(worker)
        worker.start()

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for the running actions, ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = [w for w in self._workers if w.is_alive()]

    def spawn(
        self, what: str, call: Callable[[], Any], done: Callable[[str], None], *,
        progress: str = "", warning: str = "",
    ) -> None:
        """Run the API ``call``; with ``progress``, show it in :attr:`status` while it runs
        and its outcome after. Then ``done`` gets the error in words ('' on success)."""
        def work() -> None:
            start = time.monotonic()
            finished = threading.Event()
            box: dict[str, Any] = {}

            def call_it() -> None:
                try:
                    box["answer"] = call()
                except ClientError as exc:
                    box["error"] = exc
                finally:
                    finished.set()

            threading.Thread(target=call_it, name="lemonade-call", daemon=True).start()
            note = f"<div style='color:#e65100'>⚠ {warning}</div>" if warning else ""
            while progress and not finished.wait(0.25):
                self.status.value = (
                    f"<progress style='width:8em'></progress> {progress}… "
                    f"{time.monotonic() - start:.1f} s{note}"
                )
            finished.wait()
            elapsed = time.monotonic() - start
            error = f"{what}: {box['error']}" if "error" in box else ""
            if progress:
                self.status.value = (
                    f"<span style='color:#c62828'>✗ {html.escape(error)}</span>" if error
                    else f"✓ {html.escape(what)} in {elapsed:.2f} s")
            done(error)

        self.run(f"lemonade-{what}", work)
