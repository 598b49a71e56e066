"""A progress indicator for blocking calls such as ``%lemonade load`` and ``%lemonade pull``.

The blocking call runs on a worker thread; the calling (cell) thread keeps the output and
updates the indicator until the worker is done, so output lands in the right cell without
relying on thread-to-cell routing in ipykernel. Modes: ``display`` (an updatable display in a
notebook: a ``<progress>`` bar, with the elapsed time), ``text`` (for terminals: dots, or a
one-line byte counter when the call reports its progress) and ``none``.

A call that knows how far it got (a download) passes ``progress``, a function returning
``(bytes done, bytes total)``; the bar is then determinate. ``on_interrupt`` is what Ctrl-C (a
kernel interrupt) does besides stopping the indicator: ``%lemonade pull`` cancels the pull on
the server there, so that nothing is left half-registered.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .pools import format_bytes

__all__ = ["run_with_progress", "ProgressView"]

T = TypeVar("T")

#: Seconds Ctrl-C waits for the interrupted call to end after ``on_interrupt``.
INTERRUPT_WAIT_S = 30.0


class ProgressView:
    """What the indicator shows at one moment (HTML and text forms)."""

    def __init__(self, label: str, elapsed: float, state: str = "running",
                 done: int | None = None, total: int | None = None) -> None:
        self.label, self.elapsed, self.state = label, elapsed, state
        self.done, self.total = done, total

    @property
    def percent(self) -> float | None:
        if self.done is None or not self.total:
            return None
        return min(100.0, 100.0 * self.done / self.total)

    def counter(self) -> str:
        """``45.2 MiB / 93.8 MiB (48 %)``, or "" when the call reports no progress."""
        if self.done is None:
            return ""
        if self.percent is None:
            return format_bytes(self.done)
        return f"{format_bytes(self.done)} / {format_bytes(self.total or 0)} ({self.percent:.0f} %)"

    def __repr__(self) -> str:
        mark = {"running": "…", "done": "done", "failed": "failed",
                "cancelled": "cancelled"}[self.state]
        counter = f"{self.counter()} " if self.counter() else ""
        return f"{self.label} {counter}{mark} ({self.elapsed:.1f} s)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        label = html.escape(self.label)
        counter = html.escape(self.counter())
        if self.state == "running":
            if self.percent is not None:
                bar = (f"<progress style='width:12em;vertical-align:middle' "
                       f"value='{self.percent:.1f}' max='100'></progress>")
            else:
                bar = "<progress style='width:12em;vertical-align:middle'></progress>"
            return (f"<div class='lemonade-progress'>{bar} {label}… {counter} "
                    f"{self.elapsed:.1f} s</div>")
        mark = {"done": "✓", "failed": "✗", "cancelled": "⏹"}[self.state]
        bar = ""
        if self.percent is not None:
            bar = (f"<progress style='width:12em;vertical-align:middle' "
                   f"value='{self.percent:.1f}' max='100'></progress> ")
        return (f"<div class='lemonade-progress'>{bar}{mark} {label} {counter} "
                f"({self.elapsed:.2f} s)</div>")


def run_with_progress(
    label: str, fn: Callable[[], T], *, mode: str = "text", interval: float = 0.25,
    progress: Callable[[], tuple[int, int | None] | None] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> tuple[T, float]:
    """Run ``fn()`` on a worker thread while showing progress; return ``(result, seconds)``.

    The worker's exception is re-raised here. A KeyboardInterrupt stops the indicator and runs
    ``on_interrupt`` (when given, then waits a while for the call to end); it is re-raised, so
    the rest of the cell does not run. Without ``on_interrupt`` the request already sent keeps
    running on the server.
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

    def view(state: str = "running") -> ProgressView:
        reported = progress() if progress is not None else None
        got, total = reported if reported is not None else (None, None)
        return ProgressView(label, time.monotonic() - start, state, got, total)

    start = time.monotonic()
    threading.Thread(target=work, name="lemonade-progress-call", daemon=True).start()
    handle = None
    counting = progress is not None and mode == "text"
    shown = ""
    if mode == "display":
        from IPython.display import display

        handle = display(view(), display_id=True)
    elif mode == "text":
        print(f"{label} ", end="", flush=True)
    state = "failed"
    try:
        while not done.wait(interval):
            current = view()
            if handle is not None:
                handle.update(current)
            elif counting:
                line = current.counter()
                if line and line != shown:
                    print(f"\r{label} {line}", end="", flush=True)
                    shown = line
            elif mode == "text":
                print(".", end="", flush=True)
        state = "done" if "error" not in box else "failed"
    except KeyboardInterrupt:
        state = "cancelled" if on_interrupt is not None else "failed"
        if on_interrupt is not None:
            try:
                on_interrupt()
            except Exception as exc:  # noqa: BLE001 - the interrupt must still stop the cell
                print(f"\nCould not cancel: {exc}", file=sys.stderr, flush=True)
            done.wait(INTERRUPT_WAIT_S)
        raise
    finally:
        final = view(state)
        elapsed = final.elapsed
        if handle is not None:
            handle.update(final)
        elif mode == "text":
            counter = f" {final.counter()}" if counting and final.counter() else ""
            prefix = f"\r{label}" if counting else ""
            print(f"{prefix}{counter} {state} ({elapsed:.1f} s)", flush=True)
            sys.stdout.flush()
    if "error" in box:
        raise box["error"]
    return box["result"], elapsed
