"""The live models and every change of their state: admission, loads, reloads, evictions.

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
* A failed start evicts every model that may go for a retry and tries once more; during a
  crash-loop cooldown an explicit load is tried once, without the retry.

The one writer of the model records: owns ``_models`` (name → :class:`LiveModel`, loading
entries included), every field of each (planners such as :class:`~.fit_admission.FitAdmission`
return decisions that it applies; leases and request slots are taken and given back through
its methods) and the transitions; written only on the router's event loop. What it needs from
the world goes through two interfaces (:mod:`.effects`): a :class:`~.launcher.BackendLauncher`
and the router's :class:`~.effects.Effects`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..errors import (
    InsufficientMemoryError, InvalidRequestError, LemonadeError, ModelLoadError,
    ModelNotFoundError, SlotsPinnedError,
)
from . import request_slots
from .backend import Backend
from .catalog import Catalog, ModelSpec
from .context_size import requested_label
from .decisions import (
    EvictReason, admission, may_downsize, may_evict, pool, retry_victims, shrink_victims,
)
from .effects import Effects
from .events import EventLog
from .fit_admission import FitAdmission, FitPlan
from .launcher import BackendLauncher
from .lifecycle import SERVING, ChangeSignal, ModelState, TransitionKind
from .live_model import LiveModel, ModelSnapshot
from .memory import MemorySample
from .memory_sources import ModelMemory
from .options import LoadOptions
from .preferences import ModelPreferences
from .transitions import Transitions

log = logging.getLogger(__name__)


class ModelTable:
    """Keeps models loaded within per-type slots; the router's lifecycle engine and the one
    writer of every model's record."""

    def __init__(self, *, catalog: Catalog, preferences: ModelPreferences,
                 launcher: BackendLauncher, events: EventLog, effects: Effects) -> None:
        self._catalog = catalog
        self._prefs = preferences
        self._launcher = launcher
        self._events = events
        self._effects = effects
        #: Wakes whoever waits for "any model changed"; each model has its own signal too.
        self.changes = ChangeSignal()
        self._models: dict[str, LiveModel] = {}
        self.transitions = Transitions(self.changes)
        self.fit = FitAdmission(effects.settings, launcher.offloads, launcher.engine_gpus)

    def _changed(self, m: LiveModel) -> None:
        """Wake the waiters of ``m`` and those of any model."""
        m.changes.notify()
        self.changes.notify()

    def notify_all(self) -> None:
        """Something about every model changed (the router stops, the settings changed)."""
        for m in list(self._models.values()):
            m.changes.notify()
        self.changes.notify()

    # ------------------------------------------------------------------ queries
    def get(self, name: str) -> LiveModel | None:
        """The admitted entry of ``name`` (a loading one included), else None."""
        m = self._models.get(name)
        return m if m is not None and m.admitted else None

    def live(self) -> list[LiveModel]:
        return [m for m in self._models.values() if m.admitted]

    def entries(self) -> list[LiveModel]:
        """Every entry, those still waiting for a slot included."""
        return list(self._models.values())

    def snapshots(self) -> list[ModelSnapshot]:
        return [m.snapshot() for m in self._models.values()]

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
        probed = False
        while True:
            self._effects.check_open()
            m = self._models.get(name)
            if m is not None and m.backend is not None and m.backend.exited.done():
                self._effects.backend_exited(m, m.backend)
                if self._models.get(name) is m and m.backend is not None:
                    # Not a crash: a stop we asked for (evict, unload, kill) has reaped the
                    # process but not returned yet. Its transition notifies when it has.
                    await m.changes.wait()
                continue
            if m is None:
                retry = self._may_start(name, explicit)
                m = self._new_entry(spec, pinned, options, given)
                task = self._start_transition(
                    m, TransitionKind.LOAD, self._load_task(m, reason, retry))
                await self._await(m, task, TransitionKind.LOAD)
                continue
            current = self.transitions.current(name)
            if current is not None:
                await self._await(m, current.task, current.kind)
                continue
            if m.stored_state is ModelState.DOWNSIZED:
                retry = self._may_start(name, explicit)
                task = self._start_transition(m, TransitionKind.RESTORE,
                                              self._restore_task(m, TransitionKind.RESTORE,
                                                                 reason, retry))
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
                m.pending_options = merged
                task = self._start_transition(m, TransitionKind.RELOAD, self._reload_task(m))
                await self._await(m, task, TransitionKind.RELOAD)
                continue
            if merged != m.options:  # eviction options only: they apply in place
                self._prefs.set_options(name, merged)
                self._effects.persist()
            if pinned is not None:
                self.set_pin(m, pinned)
            if count_use:
                m.touch()
            return m

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

    def _may_start(self, name: str, explicit: bool) -> bool:
        """Refuse an automatic start during a cooldown; say whether a failure may be retried."""
        guard = self._effects.guard()
        if not explicit:
            guard.check(name)
            return True
        return not guard.cooling_down(name)  # tried once, now

    def _new_entry(self, spec: ModelSpec, pinned: bool | None, options: LoadOptions,
                   given: frozenset[str]) -> LiveModel:
        if pinned is not None:
            self._prefs.set_pinned(spec.name, pinned)
        m = LiveModel(spec=spec, preferences=self._prefs)
        m.pending_options = self._prefs.options(spec.name).merged(options, given)
        self._models[spec.name] = m
        return m

    async def _await(self, m: LiveModel, task: asyncio.Task[None],
                     kind: TransitionKind) -> None:
        """Wait for ``task``; a failed start fails every waiter, other outcomes re-loop.

        While waiting the model counts as busy, so that nobody evicts it between the end of
        its load and the moment the waiters take their lease.
        """
        m.waiters += 1
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
        finally:
            m.waiters -= 1
            self._changed(m)

    def _start_transition(self, m: LiveModel, kind: TransitionKind,
                          coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start ``m``'s transition; its end wakes the model's own waiters too."""
        return self.transitions.start(m.name, kind, self._notifying(m, coro))

    async def _run_transition(self, m: LiveModel, kind: TransitionKind,
                              coro: Coroutine[Any, Any, None]) -> None:
        """Start ``coro`` unless a transition runs for ``m``; await whichever runs."""
        current = self.transitions.current(m.name)
        if current is not None:
            coro.close()  # never started: closed here, before a wrapper could hide it
            await asyncio.shield(current.task)
            return
        await asyncio.shield(self._start_transition(m, kind, coro))

    async def _notifying(self, m: LiveModel, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        finally:
            self._changed(m)

    # ------------------------------------------------------------------ transitions
    async def _load_task(self, m: LiveModel, reason: str, retry: bool) -> None:
        try:
            # Checked before admission: a load that cannot even start must not cost another
            # model its slot (a missing file or engine used to evict the pool's LRU model).
            self._launcher.check_can_start(m.spec)
            await self._place(m)  # refuses (409) before anyone is evicted if it cannot fit
            await self._admit(m)
            await self._make_room(m)
            backend = await self._start_with_retry(m, retry)
        except BaseException as exc:
            self.forget(m)
            refused = (SlotsPinnedError, InsufficientMemoryError, InvalidRequestError)
            if isinstance(exc, LemonadeError) and not isinstance(exc, refused):
                self._events.emit("load_failed", m.name, reason, error=exc.message[:500])
            raise
        self._install(m, backend)
        m.touch()
        self._events.emit(
            "reload" if reason in ("crash", "restore") else "load", m.name, reason,
            load_duration_ms=round(m.load_duration_ms, 1), pinned=m.pinned,
            ctx_size=m.ctx_size, ctx_size_requested=requested_label(m.options.ctx_size),
        )
        self._effects.persist()

    async def _restore_task(self, m: LiveModel, kind: TransitionKind, reason: str,
                            retry: bool = True) -> None:
        """Start a new backend for ``m`` in its slot (a downsized model, or a reload)."""
        self._set_state(m, ModelState.LOADING)
        try:
            await self._place(m)
            await self._make_room(m)
            backend = await self._start_with_retry(m, retry)
        except BaseException:
            self.forget(m)
            raise
        self._install(m, backend)
        self._events.emit(kind.value, m.name, reason,
                          load_duration_ms=round(m.load_duration_ms, 1), pinned=m.pinned,
                          ctx_size=m.ctx_size,
                          ctx_size_requested=requested_label(m.options.ctx_size))

    async def _reload_task(self, m: LiveModel) -> None:
        """Process options changed: a new process in the same slot, pin kept."""
        await self._drain(m)
        if self._models.get(m.name) is not m:
            return  # it crashed meanwhile; the next request loads it afresh
        self._set_state(m, ModelState.LOADING)
        old = self._take_backend(m)
        if old is not None:
            await old.stop()
        # A "reload" event, not "restore": nothing was downsized, the options changed.
        await self._restore_task(m, TransitionKind.RELOAD, "options")

    async def _downsize_task(self, m: LiveModel) -> None:
        if not may_downsize(m.snapshot()) or m.backend is None:
            return
        self._set_state(m, ModelState.DOWNSIZING)
        pid = m.backend.pid
        sample = await self._effects.measure()  # right before: report what is really freed
        if m.backend is None:
            return  # it crashed while we measured; the crash path forgot it
        before = sample.per_pid.get(pid) if pid is not None else None
        old = self._take_backend(m)
        assert old is not None
        await old.stop()
        m.memory_freed_bytes = before
        self._set_state(m, ModelState.DOWNSIZED)  # its memory_bytes reads 0 from now on
        self._events.emit("downsize", m.name, "idle", memory_before=before, memory_after=0)

    async def _evict_task(self, m: LiveModel, reason: EvictReason) -> None:
        if not may_evict(m.snapshot(), reason):
            return  # rescued: used, pinned or busy since the decision
        self._set_state(m, ModelState.EVICTING)
        await self._drain(m)
        if self._models.get(m.name) is not m:
            return  # it crashed while draining; the crash event said so
        before = m.memory_bytes
        if m.backend is not None:
            await m.backend.stop()
        self._take_backend(m)
        self.forget(m)
        kind = "unload" if reason is EvictReason.MANUAL else "evict"
        self._events.emit(kind, m.name, reason.value, memory_before=before, memory_after=0)

    # ------------------------------------------------------------------ admission and starts
    async def _admit(self, m: LiveModel) -> None:
        """Wait until ``m`` has a slot in its pool, evicting LRU models that may go."""
        while True:
            self._effects.check_open()
            members = [s for s in pool(self.snapshots(), m.type) if s.name != m.name]
            decision = admission(members, self._effects.settings().max_loaded_models)
            if decision.admit:
                m.admitted = True
                self._changed(m)
                return
            if decision.all_pinned:
                raise SlotsPinnedError(m.type, m.name)
            victim = self._models.get(decision.victim.name) if decision.victim else None
            if victim is not None:
                await self.evict(victim, EvictReason.LRU)
                continue
            await self.changes.wait()  # about any member of the pool

    async def _start_with_retry(self, m: LiveModel, retry: bool) -> Backend:
        """Start a backend; on failure evict every model that may go and retry once."""
        guard = self._effects.guard()
        try:
            return await self._start(m)
        except ModelLoadError as first:
            guard.failure(m.name, first.message)
            if not retry:
                raise
            log.warning("Load of %s failed, retrying once: %s", m.name, first.message)
            victims = [self._models[s.name] for s in retry_victims(self.snapshots(), m.name)]
            await asyncio.gather(*(self.evict(x, EvictReason.RETRY) for x in victims))
            try:
                return await self._start(m)
            except ModelLoadError as second:
                guard.failure(m.name, second.message)
                raise

    # ------------------------------------------------------------------ placement and fit
    async def _place(self, m: LiveModel) -> None:
        """Choose ``m``'s devices and its need; 409 before anyone is evicted if it cannot fit.

        With an engine that cannot offload and no RAM budget there is nothing to choose or
        check: the model runs on the CPU, without a memory sample (a thread hop) on its way."""
        await self._launcher.probe_engine()  # once per engine binary: what it offloads to
        wanted = await self.fit.resolve_context(m)
        if not self.fit.active():
            self._apply_plan(m, await self.fit.place_unchecked(m, wanted))
        else:
            others = self._others(m)
            sample = await self._effects.fresh(1.0)
            self._apply_plan(m, await self.fit.place(m, wanted, others, sample))
            self.fit.victims(m, others, sample)  # 409 here, before anyone is evicted
        if m.ctx_size != wanted:
            self._events.emit("context", m.name, "fit", trained=wanted, ctx_size=m.ctx_size)

    def _apply_plan(self, m: LiveModel, plan: FitPlan) -> None:
        m.placement, m.estimate_bytes, m.ctx_size = (
            plan.placement, plan.estimate_bytes, plan.ctx_size)

    async def _make_room(self, m: LiveModel) -> None:
        """Evict what the fit decision names, as one decision with reason ``fit``."""
        if m.estimate_bytes is None:
            return  # no fit is checked for it
        victims = self.fit.victims(m, self._others(m), await self._effects.fresh(1.0))
        if victims:
            await asyncio.gather(*(self.evict(v, EvictReason.FIT) for v in victims))

    def _others(self, m: LiveModel) -> list[LiveModel]:
        return [x for x in self._models.values() if x is not m and x.admitted]

    def apply_memory_sample(self, sample: MemorySample) -> None:
        """Attribute a memory sample to the live models (the router's memory listener)."""
        for m, memory in self.fit.attribute(list(self._models.values()), sample):
            m.memory = memory

    async def _start(self, m: LiveModel) -> Backend:
        """One start on ``m``'s placement; on a GPU, measure the device's change across it."""
        if m.placement.on_cpu:
            return await self._launcher.start(m.spec, m.start_options(), m.placement)
        before = await self._effects.measure()
        backend = await self._launcher.start(m.spec, m.start_options(), m.placement)
        after = await self._effects.measure()
        m.load_delta = {}
        for uuid in m.placement.uuids:
            was, now = before.device(uuid), after.device(uuid)
            if was is not None and now is not None:
                m.load_delta[uuid] = max(0, now.used - was.used)
        return backend

    def _install(self, m: LiveModel, backend: Backend) -> None:
        m.backend = backend
        if m.pending_options is not None:  # a start with them succeeded: remember them
            self._prefs.set_options(m.name, m.pending_options)
            m.pending_options = None
        m.load_duration_ms = backend.load_duration_ms
        m.memory = ModelMemory()  # not measured yet: the next sample attributes the new one
        self._set_state(m, ModelState.READY)
        backend.exited.add_done_callback(
            lambda _f: self._effects.backend_exited(m, backend))

    def _set_state(self, m: LiveModel, new: ModelState) -> None:
        m.set_state(new)  # checks the lifecycle table, wakes the model's waiters
        self.changes.notify()

    def _take_backend(self, m: LiveModel) -> Backend | None:
        """Detach ``m``'s backend, to stop it (the model stays in the table)."""
        old, m.backend = m.backend, None
        self._changed(m)
        return old

    # ------------------------------------------------------------------ leaving
    def forget(self, m: LiveModel) -> None:
        """The one place a model leaves the table (unloaded, failed, crashed, evicted)."""
        m.pending_options = None
        m.set_state(ModelState.UNLOADED)
        if self._models.get(m.name) is m:
            del self._models[m.name]
            self._effects.persist()  # the loaded set changed (a no-op while the router stops)
        self._changed(m)

    async def evict(self, m: LiveModel, reason: EvictReason) -> bool:
        """Evict ``m`` if :func:`may_evict` allows it once running transitions are done.

        Single-flight: a load or restore in progress finishes first. Returns True when the
        model is gone afterwards.
        """
        while (current := self.transitions.current(m.name)) is not None \
                and current.kind is not TransitionKind.EVICT:
            with contextlib.suppress(LemonadeError):
                await asyncio.shield(current.task)
        if self._models.get(m.name) is m:
            await self._run_transition(m, TransitionKind.EVICT, self._evict_task(m, reason))
        return self._models.get(m.name) is not m

    async def downsize(self, m: LiveModel) -> int | None:
        """Release an idle model's memory, keeping its slot; the bytes freed, if known."""
        if not may_downsize(m.snapshot()) or m.backend is None:
            return None
        await self._run_transition(m, TransitionKind.DOWNSIZE, self._downsize_task(m))
        return m.memory_freed_bytes if m.stored_state is ModelState.DOWNSIZED else None

    async def unload(self, name: str | None) -> None:
        """Explicitly unload one model (pinned too) or all; forget their pins and options.

        A live model's pin is forgotten once it is gone, not before: forgotten first, it made
        the model fair game for an LRU eviction racing the unload (an "evict" of a model the
        user had pinned, found by the random-operations test)."""
        if name is None:
            targets = list(self._models.values())
            live = {m.name for m in targets}
            for remembered in self._prefs.names() - live:
                self._prefs.forget(remembered)
        else:
            m = self._models.get(name)
            if m is None:
                self._catalog.get(name)  # an unknown name is a 404 of its own
                raise ModelNotFoundError(f"Model '{name}' is not loaded", param="model_name")
            targets = [m]

        async def unload_one(m: LiveModel) -> None:
            await self.evict(m, EvictReason.MANUAL)
            if m.name not in self._models:  # not loaded again meanwhile, with its own pin
                self._prefs.forget(m.name)

        await asyncio.gather(*(unload_one(m) for m in targets))
        self.changes.notify()  # pins were forgotten: a pool may admit now
        self._effects.persist()

    async def shrink(self) -> None:
        """Evict LRU unpinned models until every pool fits the slots (busy ones when idle)."""
        while True:
            self._effects.check_open()
            slots = self._effects.settings().max_loaded_models
            snaps = self.snapshots()
            victims = [v for t in {s.type for s in snaps if s.admitted}
                       for v in shrink_victims(pool(snaps, t), slots)]
            if not victims:
                return
            now = [self._models[v.name] for v in victims if may_evict(v, EvictReason.LRU)]
            if now:
                await asyncio.gather(*(self.evict(m, EvictReason.LRU) for m in now))
            else:
                await self.changes.wait()  # about any model of the pools

    async def _drain(self, m: LiveModel) -> None:
        """Wait until no request is in flight on ``m`` (a busy model is never evicted)."""
        while m.in_flight > 0:
            await m.changes.wait()

    # ------------------------------------------------------------------ pins
    def set_pin(self, m: LiveModel, pinned: bool) -> None:
        if self._prefs.set_pinned(m.name, pinned):
            self._events.emit("pin" if pinned else "unpin", m.name, "manual")
            self._changed(m)
        self._effects.persist()

    # ------------------------------------------------------------------ leases
    def take_lease(self, m: LiveModel, *, slot: bool) -> Backend:
        """Count one request in flight on ``m`` (and in one of its slots); return its backend.

        The caller checked, with no await since, that ``m`` serves and (for ``slot``) that a
        slot is free."""
        assert m.backend is not None
        m.in_flight += 1
        if slot:
            m.busy_slots += 1
        self._changed(m)
        return m.backend

    def end_lease(self, m: LiveModel, *, slot: bool) -> None:
        """A request on ``m`` ended: it leaves the in-flight count (and its slot)."""
        m.in_flight = max(0, m.in_flight - 1)
        if slot:
            m.busy_slots = max(0, m.busy_slots - 1)
        self._changed(m)

    async def wait_for_slot(self, m: LiveModel, bound: int | None,
                            serving: Callable[[], bool]) -> bool:
        """Wait in ``m``'s queue until it is this request's turn and a slot is free.

        Returns True when the caller may take the slot now (before any other await); False
        when ``m`` stopped serving meanwhile (``serving()`` turned False: evicted, crashed,
        reloading), so the caller must ask for the model again. Raises QueueFullError at once
        when ``bound`` requests already wait. A cancelled wait leaves the queue.
        """
        request_slots.check_queue(m, bound)
        ticket = object()
        m.slot_queue.append(ticket)
        self._changed(m)  # the model is busy now: nothing evicts it under the waiting request
        try:
            while True:
                if not serving():
                    return False
                if request_slots.is_turn_of(m, ticket):
                    return True
                await m.changes.wait()
        finally:
            m.slot_queue.remove(ticket)
            self._changed(m)

    # ------------------------------------------------------------------ crashes
    def remove_crashed(self, m: LiveModel, backend: Backend) -> bool:
        """Forget ``m`` because ``backend``, its current one, died; False if it is not."""
        if m.backend is not backend:
            return False
        m.backend = None
        self.forget(m)
        return True

    async def stop_all(self) -> None:
        """Cancel transitions, stop every backend, forget every model (router shutdown)."""
        tasks = self.transitions.tasks()
        for task in tasks:
            task.cancel()
        backends = [m.backend for m in self._models.values() if m.backend is not None]
        await asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        for m in list(self._models.values()):
            self.forget(m)
