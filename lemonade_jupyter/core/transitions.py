"""Single-flight transitions: at most one load, restore, reload, downsize or evict per model.

Everyone who needs a model that is changing awaits the same task instead of starting another.
Owns ``_running`` (model name → its transition); written on the router's loop only. Ending a
transition wakes waiters through the change signal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from .lifecycle import ChangeSignal, TransitionKind


@dataclass(frozen=True)
class Transition:
    kind: TransitionKind
    task: asyncio.Task[None]


class Transitions:
    """The running transition of each model, and the one way to start or join one."""

    def __init__(self, changes: ChangeSignal) -> None:
        self._changes = changes
        self._running: dict[str, Transition] = {}

    def current(self, name: str) -> Transition | None:
        return self._running.get(name)

    def start(self, name: str, kind: TransitionKind,
              coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as ``name``'s transition; the caller checked that none runs."""

        async def tracked() -> None:
            try:
                await coro
            finally:
                # Leave the table in the very step the task finishes. Removed only by a
                # done-callback (a later loop step), a finished task stayed listed meanwhile,
                # and callers awaiting it looped without ever yielding: the router's loop hung
                # for good (found by the random-operations test in tests/reliability).
                self._end(name, asyncio.current_task())

        task = asyncio.ensure_future(tracked())
        self._running[name] = Transition(kind, task)

        def done(t: asyncio.Task[None]) -> None:
            self._end(name, t)
            if not t.cancelled():
                t.exception()  # retrieved here; waiters re-raise their own copy

        task.add_done_callback(done)
        return task

    def _end(self, name: str, task: asyncio.Task[Any] | None) -> None:
        current = self._running.get(name)
        if current is not None and current.task is task:
            del self._running[name]
        self._changes.notify()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [t.task for t in self._running.values()]

    def summary(self) -> list[tuple[str, str, bool]]:
        """``(model, kind, done)`` per running transition, for post-mortem dumps."""
        return [(n, t.kind.value, t.task.done()) for n, t in self._running.items()]
