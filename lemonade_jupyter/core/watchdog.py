"""The watchdog: finds hung backends; it observes and reports, the router acts.

A backend that *exits* is noticed at once through its ``exited`` future. One that hangs
(``SIGSTOP``, a deadlock) keeps its port open, so the watchdog probes ``/health`` of every
serving backend each ``watchdog_interval_s``; :meth:`Watchdog.check_once` returns those that
failed ``watchdog_probe_failures`` probes in a row, and the router kills them (which takes the
crash path and reloads a pinned model).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol


class Probed(Protocol):
    """What the watchdog needs of a backend (``core.backend.Backend`` has it)."""

    generation: int

    async def probe(self, timeout_s: float) -> bool: ...


class Watchdog:
    """Counts failed liveness probes per backend generation.

    Owns ``_failures`` (generation → failed probes in a row); written only by
    :meth:`check_once` on the router's loop.
    """

    def __init__(self) -> None:
        self._failures: dict[int, int] = {}

    async def check_once(self, backends: Sequence[Probed], *, timeout_s: float,
                         failures_to_kill: int) -> list[Probed]:
        """Probe every backend in parallel; return those that failed too often in a row."""
        results = await asyncio.gather(*(b.probe(timeout_s) for b in backends))
        hung = []
        alive = set()
        for backend, ok in zip(backends, results):
            alive.add(backend.generation)
            if ok:
                self._failures.pop(backend.generation, None)
                continue
            count = self._failures.get(backend.generation, 0) + 1
            self._failures[backend.generation] = count
            if count >= failures_to_kill:
                hung.append(backend)
        for generation in list(self._failures):
            if generation not in alive:
                del self._failures[generation]
        return hung

    def failures(self, generation: int) -> int:
        return self._failures.get(generation, 0)


async def run_every(interval_s: Callable[[], float],
                    round_: Callable[[], Awaitable[None]]) -> None:
    """Run ``round_`` forever, ``interval_s()`` apart (read each time: settings change)."""
    while True:
        await asyncio.sleep(interval_s())
        await round_()
