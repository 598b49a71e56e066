"""The crash policy and the eviction commit: it finds out what happened to backends and acts.

The model table notices a backend's end (its ``exited`` future, a stop it did not ask for, a
probe an explicit load made) and reports it through :class:`~.effects.Effects`; the router
hands the report here. This module decides and acts, in one place:

* **A crash** (an exit nobody asked for): the crash-loop guard counts it, the table forgets
  the model (:meth:`ModelTable.remove_crashed`), a ``crash`` event is emitted, and a pinned
  model is reloaded at once (:meth:`Supervisor.keep_pinned_loaded`, which waits out
  cooldowns and tries again). An unpinned model comes back on its next request.
* **A hang**: a backend that failed ``watchdog_probe_failures`` probes in a row
  (:meth:`Supervisor.check_backends`), or that a request found silent
  (:meth:`Supervisor.report_failure`), is killed with SIGKILL, which takes the crash path.
* **The eviction commit**: :meth:`Supervisor.evaluate_eviction` plans on a snapshot
  (:func:`~.eviction.plan`), waits the grace period, and commits only what
  :func:`~.eviction.rescued` says was not used meanwhile.

It owns nothing but the watchdog's failure counts; every write to a model goes through the
table. Runs on the router's loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping

from ..errors import CoolingDownError, LemonadeError, ModelLoadError
from . import eviction, process
from .backend import Backend, BackendState
from .effects import Effects
from .events import EventLog
from .lifecycle import SERVING, ModelState
from .live_model import LiveModel
from .model_table import ModelTable
from .options import LoadOptions
from .preferences import ModelPreferences
from .watchdog import Watchdog, run_every

log = logging.getLogger(__name__)

#: An eviction reports memory from a sample at most this old (taken before it commits).
MEASURE_MAX_AGE_S = 0.5


class Supervisor:
    """Decides what a backend's exit or silence means, and commits planned evictions."""

    def __init__(self, table: ModelTable, effects: Effects, preferences: ModelPreferences,
                 events: EventLog) -> None:
        self._table = table
        self._effects = effects
        self._prefs = preferences
        self._events = events
        self.watchdog = Watchdog()

    # ------------------------------------------------------------------ crashes
    def backend_exited(self, m: LiveModel, backend: Backend, *, forced: bool = False) -> None:
        """The backend of ``m`` exited: if we did not ask for it, it is a crash.

        Idempotent: only the first call for the current backend acts. The model leaves its
        pool; a pinned one comes back at once.
        """
        if m.backend is not backend or (backend.stop_requested and not forced):
            return
        code = backend.exited.result() if backend.exited.done() else None
        self._effects.guard().exited(
            m.name, uptime_s=time.time() - backend.started_at, served=backend.served,
            reason=f"backend exited with code {code}")
        if not self._table.remove_crashed(m, backend):
            return
        self._events.emit("crash", m.name, "crash", exit_code=code, pid=backend.pid,
                          pinned=m.pinned)
        if self._effects.running() and self._prefs.pinned(m.name):
            self._effects.spawn(self.keep_pinned_loaded(m.name))

    async def kill(self, m: LiveModel, backend: Backend) -> None:
        """Kill a backend that stopped answering and handle it as a crash.

        SIGKILL at once: a hung process cannot stop gracefully, and a SIGSTOPped one that is
        continued first serves the requests queued meanwhile, which took the whole stop grace
        (5 s) before the reload in tests/reliability/test_faults.py.
        """
        if backend.pid is not None and not backend.exited.done():
            process.signal_group(backend.pid, signal.SIGKILL)
        await backend.stop()
        self.backend_exited(m, backend, forced=True)

    async def keep_pinned_loaded(self, name: str) -> None:
        """Reload a crashed pinned model, waiting out crash-loop cooldowns in between.

        A pin means "keep this loaded": when the model crash-loops into a cooldown it is tried
        again once the cooldown ends (one try per cooldown, and those double up to their cap,
        so this is no restart storm). It stops once the model is live, unpinned or unloaded,
        on any other error (its next request tries again), or when the router stops. The
        options it comes back with are the remembered ones.
        """
        while (self._effects.running() and self._prefs.pinned(name)
               and self._table.get(name) is None):
            try:
                await self._table.ensure(name, pinned=None, options=LoadOptions(),
                                         given=frozenset(), reason="crash", explicit=False,
                                         count_use=False)
            except CoolingDownError as exc:
                await asyncio.sleep(exc.retry_after_s)
            except ModelLoadError:
                continue  # counted by the guard: the next turn is refused into a cooldown
            except LemonadeError as exc:
                log.warning("Reload of pinned %s failed: %s", name, exc.message)
                return

    # ------------------------------------------------------------------ hangs
    async def watch(self) -> None:
        """Forever: a watchdog round (:meth:`check_backends`) every ``watchdog_interval_s``."""
        await run_every(lambda: self._effects.settings().watchdog_interval_s,
                        self.check_backends)

    async def check_backends(self) -> None:
        """One watchdog round: probe every serving backend, kill those found hung."""
        settings = self._effects.settings()
        serving = {m.backend: m for m in self._table.live()
                   if m.state in SERVING and m.backend is not None
                   and m.backend.state is BackendState.READY}
        hung = await self.watchdog.check_once(
            list(serving), timeout_s=settings.watchdog_probe_timeout_s,
            failures_to_kill=settings.watchdog_probe_failures)
        for backend in hung:
            m = serving[backend]  # type: ignore[index]
            if m.backend is backend:
                log.warning("Backend of %s failed %d probes; killing it", m.name,
                            self.watchdog.failures(backend.generation))
                await self.kill(m, backend)  # type: ignore[arg-type]

    async def report_failure(self, m: LiveModel, backend: Backend) -> None:
        """A request to ``backend`` failed in transport: find out whether it died.

        Returns once that is dealt with (a dead backend is removed, a hung one killed), so
        the caller can replay through a new lease.
        """
        if not self._effects.running():
            return  # the failure is our own shutdown closing the connection
        if not backend.exited.done():
            if await backend.probe(self._effects.settings().watchdog_probe_timeout_s):
                return
            log.warning("Backend of %s does not answer; killing it", m.name)
            await self.kill(m, backend)
            return
        self.backend_exited(m, backend)

    # ------------------------------------------------------------------ eviction commit
    def evicting(self) -> bool:
        """Whether the eviction engine has anything to do (auto-evict or downsize is on)."""
        return eviction.any_enabled(self._table.snapshots(), self._effects.settings())

    async def evaluate_eviction(
        self, pressure: float | Mapping[str, float] | None,
    ) -> list[eviction.Decision]:
        """Plan on a snapshot, wait the grace period, then commit what was not rescued.

        ``pressure``: the used fraction per device key, one figure for every device, or None
        for an idle-only pass. Returns the decisions that were carried out.
        """
        settings = self._effects.settings()
        planned = eviction.plan(self._table.snapshots(), settings, pressure)
        if not planned:
            return []
        if settings.eviction_grace_s > 0:
            await asyncio.sleep(settings.eviction_grace_s)
        if any(d.action is eviction.Action.EVICT for d in planned):
            # Measure now, so the eviction events report the memory really held (the model's
            # figure is otherwise only as fresh as the last /health poll, or unknown).
            await self._effects.fresh(MEASURE_MAX_AGE_S)
        done = []
        for decision in planned:
            m = self._table.get(decision.model)
            if eviction.rescued(decision, m.snapshot() if m is not None else None):
                continue
            assert m is not None
            if decision.action is eviction.Action.DOWNSIZE:
                await self._table.downsize(m)
                if m.stored_state is ModelState.DOWNSIZED:
                    done.append(decision)
            elif await self._table.evict(m, decision.reason):
                done.append(decision)
        return done
