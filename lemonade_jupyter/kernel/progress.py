"""A progress indicator for blocking calls such as ``%lemonade load``.

The blocking call runs on a worker thread; the calling (cell) thread keeps the output and
updates the indicator until the worker is done, so output lands in the right cell without
relying on thread-to-cell routing in ipykernel. Modes: ``display`` (an updatable display in a
notebook: an indeterminate ``<progress>`` bar with the elapsed time), ``text`` (dots on stdout,
for terminals) and ``none``.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_with_progress", "ProgressView"]

T = TypeVar("T")


class ProgressView:
    """What the indicator shows at one moment (HTML and text forms)."""

    def __init__(self, label: str, elapsed: float, state: str = "running") -> None:
        self.label, self.elapsed, self.state = label, elapsed, state

    def __repr__(self) -> str:
        mark = {"running": "…", "done": "done", "failed": "failed"}[self.state]
        return f"{self.label} {mark} ({self.elapsed:.1f} s)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        label = html.escape(self.label)
        if self.state == "running":
            bar = "<progress style='width:12em;vertical-align:middle'></progress>"
            return f"<div class='lemonade-progress'>{bar} {label}… {self.elapsed:.1f} s</div>"
        mark = "✓" if self.state == "done" else "✗"
        return f"<div class='lemonade-progress'>{mark} {label} ({self.elapsed:.2f} s)</div>"


def run_with_progress(
    label: str, fn: Callable[[], T], *, mode: str = "text", interval: float = 0.25
) -> tuple[T, float]:
    """Run ``fn()`` on a worker thread while showing progress; return ``(result, seconds)``.

    The worker's exception is re-raised here. A KeyboardInterrupt stops the indicator only: the
    request already sent keeps running on the server.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    start = time.monotonic()
    threading.Thread(target=work, name="lemonade-progress-call", daemon=True).start()
    handle = None
    if mode == "display":
        from IPython.display import display

        handle = display(ProgressView(label, 0.0), display_id=True)
    elif mode == "text":
        print(f"{label} ", end="", flush=True)
    try:
        while not done.wait(interval):
            elapsed = time.monotonic() - start
            if handle is not None:
                handle.update(ProgressView(label, elapsed))
            elif mode == "text":
                print(".", end="", flush=True)
    finally:
        elapsed = time.monotonic() - start
        ok = done.is_set() and "error" not in box
        if handle is not None:
            handle.update(ProgressView(label, elapsed, "done" if ok else "failed"))
        elif mode == "text":
            print(f" {'done' if ok else 'failed'} ({elapsed:.1f} s)", flush=True)
            sys.stdout.flush()
    if "error" in box:
        raise box["error"]
    return box["result"], elapsed
