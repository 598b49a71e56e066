"""The cold-load sequence, and its shorter forms for a restore and a reload.

A load runs as the model's one transition, in this order, and each step may refuse before the
next one costs anything:

1. the weights file and the engine exist (:meth:`~.launcher.BackendLauncher.check_can_start`),
   so a load that cannot even start never costs another model its slot;
2. placement and need (:meth:`LoadSequence._place`): 409 before anyone is evicted when the
   model cannot fit;
3. a slot in its pool (:meth:`LoadSequence._admit`): the LRU model that
   :func:`~.decisions.may_evict` lets go is evicted, a pool of busy members is waited for, a
   pool of pinned members is :class:`SlotsPinnedError`;
4. room on its devices (:meth:`LoadSequence._make_room`): the fit's victims, evicted together;
5. the start (:meth:`LoadSequence._start_with_retry`): a failed one evicts every model that
   may go and tries once more (not during a crash-loop cooldown of an explicit load).

A restore (a downsized model) and a reload (process options changed) keep the slot and run
steps 2, 4 and 5. The sequence writes nothing itself: every change of a record goes through
:class:`~.model_records.ModelRecords`.
"""

from __future__ import annotations

import asyncio
import logging

from ..errors import (
    InsufficientMemoryError, InvalidRequestError, LemonadeError, ModelLoadError,
    SlotsPinnedError,
)
from .backend import Backend
from .context_size import requested_label
from .decisions import EvictReason, admission, pool, retry_victims
from .departures import Departures
from .effects import Effects
from .events import EventLog
from .fit_admission import FitAdmission
from .launcher import BackendLauncher
from .lifecycle import ModelState, TransitionKind
from .live_model import LiveModel
from .model_records import ModelRecords

log = logging.getLogger(__name__)


class LoadSequence:
    """Loads, restores and reloads one model: check, place, admit, make room, start."""

    def __init__(self, records: ModelRecords, departures: Departures, *, fit: FitAdmission,
                 launcher: BackendLauncher, events: EventLog, effects: Effects) -> None:
        self._records = records
        self._departures = departures
        self._fit = fit
        self._launcher = launcher
        self._events = events
        self._effects = effects

    def may_start(self, name: str, explicit: bool) -> bool:
        """Refuse an automatic start during a cooldown; say whether a failure may be retried."""
        guard = self._effects.guard()
        if not explicit:
            guard.check(name)
            return True
        return not guard.cooling_down(name)  # tried once, now

    async def load(self, m: LiveModel, reason: str, retry: bool) -> None:
        """The cold load of a new entry; a failure forgets it."""
        try:
            # Checked before admission: a load that cannot even start must not cost another
            # model its slot (a missing file or engine used to evict the pool's LRU model).
            self._launcher.check_can_start(m.spec)
            await self._place(m)  # refuses (409) before anyone is evicted if it cannot fit
            await self._admit(m)
            await self._make_room(m)
            backend = await self._start_with_retry(m, retry)
        except BaseException as exc:
            self._records.forget(m)
            refused = (SlotsPinnedError, InsufficientMemoryError, InvalidRequestError)
            if isinstance(exc, LemonadeError) and not isinstance(exc, refused):
                self._events.emit("load_failed", m.name, reason, error=exc.message[:500])
            raise
        self._records.install(m, backend)
        self._records.mark_used(m)
        self._events.emit(
            "reload" if reason in ("crash", "restore") else "load", m.name, reason,
            load_duration_ms=round(m.load_duration_ms, 1), pinned=m.pinned,
            ctx_size=m.ctx_size, ctx_size_requested=requested_label(m.options.ctx_size),
        )
        self._effects.persist()

    async def restore(self, m: LiveModel, kind: TransitionKind, reason: str,
                      retry: bool = True) -> None:
        """Start a new backend for ``m`` in its slot (a downsized model, or a reload)."""
        self._records.move(m, ModelState.LOADING)
        try:
            await self._place(m)
            await self._make_room(m)
            backend = await self._start_with_retry(m, retry)
        except BaseException:
            self._records.forget(m)
            raise
        self._records.install(m, backend)
        self._events.emit(kind.value, m.name, reason,
                          load_duration_ms=round(m.load_duration_ms, 1), pinned=m.pinned,
                          ctx_size=m.ctx_size,
                          ctx_size_requested=requested_label(m.options.ctx_size))

    async def reload(self, m: LiveModel) -> None:
        """Process options changed: a new process in the same slot, pin kept."""
        await self._departures.drain(m)
        if not self._records.holds(m):
            return  # it crashed meanwhile; the next request loads it afresh
        self._records.move(m, ModelState.LOADING)
        old = self._records.take_backend(m)
        if old is not None:
            await old.stop()
        # A "reload" event, not "restore": nothing was downsized, the options changed.
        await self.restore(m, TransitionKind.RELOAD, "options")

    # ------------------------------------------------------------------ the steps
    async def _admit(self, m: LiveModel) -> None:
        """Wait until ``m`` has a slot in its pool, evicting LRU models that may go."""
        while True:
            self._effects.check_open()
            members = [s for s in pool(self._records.snapshots(), m.type) if s.name != m.name]
            decision = admission(members, self._effects.settings().max_loaded_models)
            if decision.admit:
                self._records.admit(m)
                return
            if decision.all_pinned:
                raise SlotsPinnedError(m.type, m.name)
            victim = self._records.entry(decision.victim.name) if decision.victim else None
            if victim is not None:
                await self._departures.evict(victim, EvictReason.LRU)
                continue
            await self._records.changes.wait()  # about any member of the pool

    async def _place(self, m: LiveModel) -> None:
        """Choose ``m``'s devices and its need; 409 before anyone is evicted if it cannot fit.

        With an engine that cannot offload and no RAM budget there is nothing to choose or
        check: the model runs on the CPU, without a memory sample (a thread hop) on its way."""
        await self._launcher.probe_engine()  # once per engine binary: what it offloads to
        wanted = await self._fit.resolve_context(m)
        if not self._fit.active():
            self._records.apply_plan(m, await self._fit.place_unchecked(m, wanted))
        else:
            others = self._records.others(m)
            sample = await self._effects.fresh(1.0)
            self._records.apply_plan(m, await self._fit.place(m, wanted, others, sample))
            self._fit.victims(m, others, sample)  # 409 here, before anyone is evicted
        if m.ctx_size != wanted:
            self._events.emit("context", m.name, "fit", trained=wanted, ctx_size=m.ctx_size)

    async def _make_room(self, m: LiveModel) -> None:
        """Evict what the fit decision names, as one decision with reason ``fit``."""
        if m.estimate_bytes is None:
            return  # no fit is checked for it
        victims = self._fit.victims(m, self._records.others(m), await self._effects.fresh(1.0))
        if victims:
            await asyncio.gather(*(self._departures.evict(v, EvictReason.FIT)
                                   for v in victims))

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
            victims = [x for s in retry_victims(self._records.snapshots(), m.name)
                       if (x := self._records.entry(s.name)) is not None]
            await asyncio.gather(*(self._departures.evict(x, EvictReason.RETRY)
                                   for x in victims))
            try:
                return await self._start(m)
            except ModelLoadError as second:
                guard.failure(m.name, second.message)
                raise

    async def _start(self, m: LiveModel) -> Backend:
        """One start on ``m``'s placement; on a GPU, measure the device's change across it."""
        if m.placement.on_cpu:
            return await self._launcher.start(m.spec, m.start_options(), m.placement)
        before = await self._effects.measure()
        backend = await self._launcher.start(m.spec, m.start_options(), m.placement)
        self._records.record_load_delta(m, before, await self._effects.measure())
        return backend
