"""The watchdog: notices hung backends and reaps dead ones; it observes and reports only.

A backend that *exits* is noticed at once through its ``exited`` future (see
``Router._on_backend_exit``). One that hangs (``SIGSTOP``, a deadlock) keeps its port open, so
the watchdog probes ``/health`` of every serving backend each ``watchdog_interval_s`` and kills
one that failed ``watchdog_probe_failures`` probes in a row; the exit path then reloads it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .live_model import SERVING

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger(__name__)


class Watchdog:
    """Periodic liveness probes of every serving backend of one router."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._failures: dict[int, int] = {}

    async def run(self) -> None:
        """Probe forever; cancelled by ``Router.stop``."""
        while True:
            settings = self._router.settings
            await asyncio.sleep(settings.watchdog_interval_s)
            await self.check_once()

    async def check_once(self) -> None:
        """One round of probes, all in parallel."""
        router = self._router
        targets = [
            (m, m.backend) for m in router.live_models()
            if m.state in SERVING and m.backend is not None
        ]
        timeout = router.settings.watchdog_probe_timeout_s
        results = await asyncio.gather(*(b.probe(timeout) for _m, b in targets))
        alive = set()
        for (m, backend), ok in zip(targets, results):
            alive.add(backend.generation)
            if ok:
                self._failures.pop(backend.generation, None)
                continue
            count = self._failures.get(backend.generation, 0) + 1
            self._failures[backend.generation] = count
            if count >= router.settings.watchdog_probe_failures and m.backend is backend:
                log.warning("Backend of %s failed %d probes; killing it", m.name, count)
                await router.kill_hung(m, backend)
        for generation in list(self._failures):
            if generation not in alive:
                del self._failures[generation]
