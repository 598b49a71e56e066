"""What the router's parts share while it runs, and the :class:`~.effects.Effects` they use.

The owner of the router's phase (new, running, stopping, stopped), its current settings
(replaced as a whole, never mutated), the crash-loop guard built from them, the background
tasks, the control connection pool and the state file. The model table and the supervisor ask
for these through :class:`~.effects.Effects`, which :class:`RouterRuntime` implements; it
reads its state at each call, never a copy. It knows neither the router nor its API: the
router builds it first, then the table and the supervisor on it, and closes the circle with
:meth:`RouterRuntime.attach` (the table reports a backend's end here, and the supervisor acts).
Everything on the router's event loop.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from ..errors import BackendShutdownError
from . import saved_state
from .backend import Backend
from .cooldown import CrashLoopGuard
from .events import EventLog
from .live_model import LiveModel
from .memory import MemoryMonitor, MemorySample
from .model_table import ModelTable
from .persistence import RouterStateStore
from .preferences import ModelPreferences
from .settings import RouterSettings
from .supervisor import Supervisor


class RouterPhase(str, enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class RouterRuntime:
    """The router's run-time state and the effects its parts ask of it."""

    def __init__(self, settings: RouterSettings, *, state_dir: Path | None,
                 preferences: ModelPreferences, memory: MemoryMonitor,
                 events: EventLog) -> None:
        #: The settings in force (replaced as a whole, never mutated).
        self.current = settings
        self.phase = RouterPhase.NEW
        self._store = RouterStateStore(state_dir)  # None: neither restored nor saved
        self._prefs = preferences
        self._memory = memory
        self._events = events
        self._guard = self._new_guard()
        self._http: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._table: ModelTable | None = None
        self._supervisor: Supervisor | None = None

    def attach(self, table: ModelTable, supervisor: Supervisor) -> None:
        """The table whose loaded set is saved, and the supervisor that hears its reports."""
        self._table, self._supervisor = table, supervisor

    # ------------------------------------------------------------------ phase
    def open(self, known: frozenset[str]) -> tuple[str, ...] | None:
        """NEW → RUNNING: open the control pool, restore the saved settings and preferences
        (of the ``known`` models), and return the loaded set to restore (None if not NEW)."""
        if self.phase is not RouterPhase.NEW:
            return None
        self.phase = RouterPhase.RUNNING
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            timeout=httpx.Timeout(None, connect=5.0),
        )
        restored = saved_state.restore(self._store.read(), self.current, self._prefs, known)
        self.current = restored.settings
        return restored.loaded

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("Router.start() has not been awaited")
        return self._http

    def stopping(self) -> bool:
        """→ STOPPING: new work is refused from now on; False if it already stops."""
        if self.phase in (RouterPhase.STOPPING, RouterPhase.STOPPED):
            return False
        self.phase = RouterPhase.STOPPING
        return True

    async def cancel_tasks(self) -> None:
        """Cancel the background tasks and close the control pool."""
        for task in list(self._background):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()

    async def end_tasks(self) -> None:
        """Await the cancelled background tasks and close the state file."""
        await asyncio.gather(*self._background, return_exceptions=True)
        self._store.close()

    def stopped(self) -> None:
        self.phase = RouterPhase.STOPPED

    # ------------------------------------------------------------------ settings
    def update_settings(self, updates: Mapping[str, Any]) -> RouterSettings:
        """Validate and apply runtime settings, with a ``config`` event, and save them."""
        new = self.current.with_updates(updates)
        self.current = new
        self._events.emit("config", None, "manual", keys=sorted(updates))
        self.persist()
        return new

    def replace_settings(self, **changes: Any) -> None:
        """Start-up only: set non-runtime settings; the guard is rebuilt from them."""
        self.current = replace(self.current, **changes)
        self._guard = self._new_guard()

    def _new_guard(self) -> CrashLoopGuard:
        s = self.current
        return CrashLoopGuard(s.crash_loop_threshold, s.crash_cooldown_s,
                              s.crash_cooldown_max_s, s.crash_loop_window_s)

    # ------------------------------------------------------------------ Effects
    def settings(self) -> RouterSettings:
        return self.current

    def guard(self) -> CrashLoopGuard:
        return self._guard

    def check_open(self) -> None:
        if self.phase is RouterPhase.NEW:
            raise RuntimeError("Router.start() has not been awaited")
        if self.phase is not RouterPhase.RUNNING:
            raise BackendShutdownError("The lemonade router is shutting down")

    def running(self) -> bool:
        return self.phase is RouterPhase.RUNNING

    def persist(self) -> None:
        """Save preferences, the loaded set and the persisted settings (off the loop)."""
        if self.phase is not RouterPhase.RUNNING or self._table is None:
            return
        self._store.save(saved_state.to_json(
            self._prefs, (m.name for m in self._table.live()), self.current))

    async def measure(self) -> MemorySample:
        return await self._memory.sample()

    async def fresh(self, max_age_s: float) -> MemorySample:
        return await self._memory.fresh(max_age_s)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def backend_exited(self, m: LiveModel, backend: Backend) -> None:
        assert self._supervisor is not None, "attach() first"
        self._supervisor.backend_exited(m, backend)

    async def backend_hung(self, m: LiveModel, backend: Backend) -> None:
        assert self._supervisor is not None, "attach() first"
        await self._supervisor.kill(m, backend)
