"""The live models, as one table: what the router and the supervisor ask of them.

Rules in one place:

* A pool is the admitted models of one type; it holds at most ``max_loaded_models`` (-1: no
  limit). A fresh load into a full pool evicts the pool's least recently used model that
  :func:`~.decisions.may_evict` lets go; when every member is pinned it fails with
  :class:`SlotsPinnedError` and evicts nothing.
* Loads, restores, reloads, downsizes and evictions are *transitions*, at most one per model
  at a time (:mod:`.transitions`): everyone who needs the model awaits the same task.
* No lock is ever held across an await. Decisions are plain functions over snapshots, taken
  and acted on between two awaits. Whoever waits for something about one model awaits that
  model's change signal (``LiveModel.changes``); whoever waits for "any model changed" (a slot
  in a full pool, pools shrinking) awaits the table's. Every write notifies both.

The table is built of parts with one job each, and this module joins them behind one API:

* :class:`~.model_records.ModelRecords`: the records, their signals and transitions, and the
  one writer of every field (leases and request slots included);
* :class:`~.load_sequence.LoadSequence`: the cold load (check, place, admit, make room, start
  with one retry), restores and reloads;
* :class:`~.departures.Departures`: evictions, downsizes, explicit unloads, shrinking pools,
  the shutdown.

Here lives :meth:`ModelTable.ensure`, the loop that brings a model to serve by starting or
joining the transition it needs, and the pins. What the table needs from the world goes
through two interfaces (:mod:`.effects`): a :class:`~.launcher.BackendLauncher` and the
router's :class:`~.effects.Effects`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..errors import LemonadeError, ModelNotFoundError
from .backend import Backend
from .catalog import Catalog
from .decisions import EvictReason
from .departures import Departures
from .effects import Effects
from .events import EventLog
from .fit_admission import FitAdmission
from .launcher import BackendLauncher
from .lifecycle import SERVING, ChangeSignal, ModelState, TransitionKind
from .live_model import LiveModel, ModelSnapshot
from .load_sequence import LoadSequence
from .memory import MemorySample
from .model_records import ModelRecords
from .options import LoadOptions
from .preferences import ModelPreferences
from .transitions import Transitions

log = logging.getLogger(__name__)


class ModelTable:
    """Keeps models loaded within per-type slots: the router's lifecycle engine."""

    def __init__(self, *, catalog: Catalog, preferences: ModelPreferences,
                 launcher: BackendLauncher, events: EventLog, effects: Effects) -> None:
        self._catalog = catalog
        self._prefs = preferences
        self._events = events
        self._effects = effects
        self._records = ModelRecords(preferences=preferences, effects=effects)
        self.fit = FitAdmission(effects.settings, launcher.offloads, launcher.engine_gpus)
        self._departures = Departures(self._records, catalog=catalog, preferences=preferences,
                                      events=events, effects=effects)
        self._loads = LoadSequence(self._records, self._departures, fit=self.fit,
                                   launcher=launcher, events=events, effects=effects)

    @property
    def changes(self) -> ChangeSignal:
        """Wakes whoever waits for "any model changed"; each model has its own signal too."""
        return self._records.changes

    @property
    def transitions(self) -> Transitions:
        return self._records.transitions

    def notify_all(self) -> None:
        """Something about every model changed (the router stops, the settings changed)."""
        self._records.notify_all()

    # ------------------------------------------------------------------ queries
    def get(self, name: str) -> LiveModel | None:
        """The admitted entry of ``name`` (a loading one included), else None."""
        return self._records.get(name)

    def live(self) -> list[LiveModel]:
        return self._records.live()

    def entries(self) -> list[LiveModel]:
        """Every entry, those still waiting for a slot included."""
        return self._records.entries()

    def snapshots(self) -> list[ModelSnapshot]:
        return self._records.snapshots()

    def backend_pids(self) -> list[int]:
        return self._records.backend_pids()

    # ------------------------------------------------------------------ ensure
    async def ensure(self, name: str, *, pinned: bool | None, options: LoadOptions,
                     given: frozenset[str], reason: str, explicit: bool,
                     count_use: bool = True, new_only: bool = False) -> LiveModel:
        """Make ``name`` serve (loading, restoring or reloading it) and return its entry.

        ``explicit`` is a user's ``/load``: never refused by the crash-loop guard.
        ``new_only``: ``options`` apply to a new entry only, never reload a model that is
        there (an auto-loading request's options). Raises
        ModelNotFoundError, SlotsPinnedError, CoolingDownError, EngineMissingError,
        ModelLoadError, BackendShutdownError.
        """
        spec = self._catalog.get(name)
        records, loads = self._records, self._loads
        probed = False
        while True:
            self._effects.check_open()
            m = records.entry(name)
            if m is not None and m.backend is not None and m.backend.exited.done():
                self._effects.backend_exited(m, m.backend)
                if records.holds(m) and m.backend is not None:
                    # Not a crash: a stop we asked for (evict, unload, kill) has reaped the
                    # process but not returned yet. Its transition notifies when it has.
                    await m.changes.wait()
                continue
            if m is None:
                retry = loads.may_start(name, explicit)
                m = records.add(spec, pinned, options, given)
                task = records.start_transition(
                    m, TransitionKind.LOAD, self._load_task(m, reason, retry))
                await self._await(m, task, TransitionKind.LOAD)
                continue
            current = records.transitions.current(name)
            if current is not None:
                await self._await(m, current.task, current.kind)
                continue
            if m.stored_state is ModelState.DOWNSIZED:
                retry = loads.may_start(name, explicit)
                task = records.start_transition(
                    m, TransitionKind.RESTORE,
                    loads.restore(m, TransitionKind.RESTORE, reason, retry))
                await self._await(m, task, TransitionKind.RESTORE)
                continue
            if m.state not in SERVING:
                await m.changes.wait()
                continue
            if explicit and not probed:
                # Re-check everything after this await: an eviction or a crash may have
                # started meanwhile (pinning a model that is being evicted lost the pin).
                # One probe per explicit load: a silent backend is reported, and the loop
                # goes on with whatever the supervisor made of it (bounded even if nothing).
                probed = True
                await self._answers(m)
                continue
            merged = m.options if new_only else m.options.merged(options, given)
            if merged.process_key() != m.options.process_key():
                records.set_pending(m, merged)
                task = records.start_transition(m, TransitionKind.RELOAD, loads.reload(m))
                await self._await(m, task, TransitionKind.RELOAD)
                continue
            if merged != m.options:  # eviction options only: they apply in place
                self._prefs.set_options(name, merged)
                self._effects.persist()
            if pinned is not None:
                self.set_pin(m, pinned)
            if count_use:
                records.mark_used(m)
            return m

    async def _load_task(self, m: LiveModel, reason: str, retry: bool) -> None:
        """The load transition of a new entry (:meth:`LoadSequence.load`)."""
        await self._loads.load(m, reason, retry)

    async def _answers(self, m: LiveModel) -> bool:
        """An explicit load makes sure a live backend still answers; one that does not is
        handled as a crash (a SIGKILL a moment ago is not reaped yet, a hung one is killed)."""
        backend = m.backend
        if backend is None:
            return False
        if await backend.probe(self._effects.settings().watchdog_probe_timeout_s):
            return True
        if m.backend is backend and not backend.stop_requested:  # not our own eviction
            if backend.exited.done():
                self._effects.backend_exited(m, backend)
            else:
                await self._effects.backend_hung(m, backend)
        return False

    async def _await(self, m: LiveModel, task: asyncio.Task[None],
                     kind: TransitionKind) -> None:
        """Wait for ``task``; a failed start fails every waiter, other outcomes re-loop.

        While waiting the model counts as busy, so that nobody evicts it between the end of
        its load and the moment the waiters take their lease.
        """
        with self._records.waiting(m):
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    self._effects.check_open()
                    return
                raise
            except LemonadeError:
                if not kind.starts_a_backend:
                    return
                raise

    # ------------------------------------------------------------------ pins
    def set_pin(self, m: LiveModel, pinned: bool) -> None:
        if self._prefs.set_pinned(m.name, pinned):
            self._events.emit("pin" if pinned else "unpin", m.name, "manual")
            self._records.changed(m)
        self._effects.persist()

    def pin(self, name: str, pinned: bool) -> LiveModel:
        """Pin or unpin a loaded model (no reload). Pinning a downsized model restores it."""
        m = self._records.get(name)
        if m is None or m.state in (ModelState.EVICTING, ModelState.UNLOADED):
            if name not in self._catalog:
                raise ModelNotFoundError(f"Model '{name}' is not in the catalog", param="model")
            raise ModelNotFoundError(
                f"Model '{name}' is not loaded; load it first (pins apply to loaded models)",
                param="model",
            )
        self.set_pin(m, pinned)
        if pinned and m.state is ModelState.DOWNSIZED:
            self._effects.spawn(self._restore_quietly(name))
        return m

    async def _restore_quietly(self, name: str) -> None:
        try:
            await self.ensure(name, pinned=None, options=LoadOptions(), given=frozenset(),
                              reason="pin", explicit=False, count_use=False)
        except LemonadeError as exc:
            log.warning("Background reload failed: %s", exc.message)

    # ------------------------------------------------------------------ leaving
    async def evict(self, m: LiveModel, reason: EvictReason) -> bool:
        """Evict ``m`` unless rescued (:meth:`Departures.evict`); True when it is gone."""
        return await self._departures.evict(m, reason)

    async def downsize(self, m: LiveModel) -> int | None:
        """Release an idle model's memory, keeping its slot; the bytes freed, if known."""
        return await self._departures.downsize(m)

    async def unload(self, name: str | None) -> None:
        """Explicitly unload one model (pinned too) or all; forget their pins and options."""
        await self._departures.unload(name)

    async def settings_changed(self) -> None:
        """Wake every waiter to re-check, then shrink the pools to the (new) limit."""
        self._records.notify_all()
        await self._departures.shrink()

    async def shrink(self) -> None:
        """Evict LRU unpinned models until every pool fits the slots (busy ones when idle)."""
        await self._departures.shrink()

    async def stop_all(self) -> None:
        """Cancel transitions, stop every backend, forget every model (router shutdown)."""
        await self._departures.stop_all()

    def forget(self, m: LiveModel) -> None:
        """The one place a model leaves the table (:meth:`ModelRecords.forget`)."""
        self._records.forget(m)

    def remove_crashed(self, m: LiveModel, backend: Backend) -> bool:
        """Forget ``m`` because ``backend``, its current one, died; False if it is not."""
        return self._records.remove_crashed(m, backend)

    # ------------------------------------------------------------------ memory and leases
    def apply_memory_sample(self, sample: MemorySample) -> None:
        """Attribute a memory sample to the live models (the router's memory listener)."""
        self._records.set_memory(self.fit.attribute(self._records.entries(), sample))

    def take_lease(self, m: LiveModel, *, slot: bool) -> Backend:
        """Count one request in flight on ``m`` (:meth:`ModelRecords.take_lease`)."""
        return self._records.take_lease(m, slot=slot)

    def end_lease(self, m: LiveModel, *, slot: bool) -> None:
        """A request on ``m`` ended: it leaves the in-flight count (and its slot)."""
        self._records.end_lease(m, slot=slot)

    async def wait_for_slot(self, m: LiveModel, bound: int | None,
                            serving: Callable[[], bool]) -> bool:
        """Wait in ``m``'s queue for a parallel slot (:meth:`ModelRecords.wait_for_slot`)."""
        return await self._records.wait_for_slot(m, bound, serving)
