"""How models leave or give back memory: evictions, downsizes, explicit unloads, shrinking
pools and the shutdown.

Every path asks one rule, :func:`~.decisions.may_evict` (or :func:`~.decisions.may_downsize`),
on a snapshot, and asks it again when its transition starts: a model used, pinned or busy
since the decision is rescued. An eviction waits for the requests in flight (a busy model is
never cut off) and runs as the model's one transition, after a load or restore in progress
has finished. It writes nothing itself: every change of a record goes through
:class:`~.model_records.ModelRecords`.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..errors import LemonadeError, ModelNotFoundError
from .catalog import Catalog
from .decisions import EvictReason, may_downsize, may_evict, pool, shrink_victims
from .effects import Effects
from .events import EventLog
from .lifecycle import ModelState, TransitionKind
from .live_model import LiveModel
from .model_records import ModelRecords
from .preferences import ModelPreferences


class Departures:
    """Evicts, downsizes and unloads models, each as the model's one transition."""

    def __init__(self, records: ModelRecords, *, catalog: Catalog,
                 preferences: ModelPreferences, events: EventLog, effects: Effects) -> None:
        self._records = records
        self._catalog = catalog
        self._prefs = preferences
        self._events = events
        self._effects = effects

    async def evict(self, m: LiveModel, reason: EvictReason) -> bool:
        """Evict ``m`` if :func:`may_evict` allows it once running transitions are done.

        Single-flight: a load or restore in progress finishes first. Returns True when the
        model is gone afterwards.
        """
        transitions = self._records.transitions
        while (current := transitions.current(m.name)) is not None \
                and current.kind is not TransitionKind.EVICT:
            with contextlib.suppress(LemonadeError):
                await asyncio.shield(current.task)
        if self._records.holds(m):
            await self._records.run_transition(m, TransitionKind.EVICT,
                                               self._evict_task(m, reason))
        return not self._records.holds(m)

    async def downsize(self, m: LiveModel) -> int | None:
        """Release an idle model's memory, keeping its slot; the bytes freed, if known."""
        if not may_downsize(m.snapshot()) or m.backend is None:
            return None
        await self._records.run_transition(m, TransitionKind.DOWNSIZE, self._downsize_task(m))
        return m.memory_freed_bytes if m.stored_state is ModelState.DOWNSIZED else None

    async def unload(self, name: str | None) -> None:
        """Explicitly unload one model (pinned too) or all; forget their pins and options.

        A live model's pin is forgotten once it is gone, not before: forgotten first, it made
        the model fair game for an LRU eviction racing the unload (an "evict" of a model the
        user had pinned, found by the random-operations test)."""
        if name is None:
            targets = self._records.entries()
            live = {m.name for m in targets}
            for remembered in self._prefs.names() - live:
                self._prefs.forget(remembered)
        else:
            m = self._records.entry(name)
            if m is None:
                self._catalog.get(name)  # an unknown name is a 404 of its own
                raise ModelNotFoundError(f"Model '{name}' is not loaded", param="model_name")
            targets = [m]

        async def unload_one(m: LiveModel) -> None:
            await self.evict(m, EvictReason.MANUAL)
            if self._records.entry(m.name) is None:  # not loaded again, with its own pin
                self._prefs.forget(m.name)

        await asyncio.gather(*(unload_one(m) for m in targets))
        self._records.changes.notify()  # pins were forgotten: a pool may admit now
        self._effects.persist()

    async def shrink(self) -> None:
        """Evict LRU unpinned models until every pool fits the slots (busy ones when idle)."""
        while True:
            self._effects.check_open()
            slots = self._effects.settings().max_loaded_models
            snaps = self._records.snapshots()
            victims = [v for t in {s.type for s in snaps if s.admitted}
                       for v in shrink_victims(pool(snaps, t), slots)]
            if not victims:
                return
            now = [m for v in victims if may_evict(v, EvictReason.LRU)
                   if (m := self._records.entry(v.name)) is not None]
            if now:
                await asyncio.gather(*(self.evict(m, EvictReason.LRU) for m in now))
            else:
                await self._records.changes.wait()  # about any model of the pools

    async def drain(self, m: LiveModel) -> None:
        """Wait until no request is in flight on ``m`` (a busy model is never evicted)."""
        while m.in_flight > 0:
            await m.changes.wait()

    async def stop_all(self) -> None:
        """Cancel transitions, stop every backend, forget every model (router shutdown)."""
        tasks = self._records.transitions.tasks()
        for task in tasks:
            task.cancel()
        backends = [m.backend for m in self._records.entries() if m.backend is not None]
        await asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        for m in self._records.entries():
            self._records.forget(m)

    # ------------------------------------------------------------------ the transitions
    async def _downsize_task(self, m: LiveModel) -> None:
        if not may_downsize(m.snapshot()) or m.backend is None:
            return
        self._records.move(m, ModelState.DOWNSIZING)
        pid = m.backend.pid
        sample = await self._effects.measure()  # right before: report what is really freed
        if m.backend is None:
            return  # it crashed while we measured; the crash path forgot it
        before = sample.per_pid.get(pid) if pid is not None else None
        old = self._records.take_backend(m)
        assert old is not None
        await old.stop()
        self._records.mark_downsized(m, before)
        self._events.emit("downsize", m.name, "idle", memory_before=before, memory_after=0)

    async def _evict_task(self, m: LiveModel, reason: EvictReason) -> None:
        if not may_evict(m.snapshot(), reason):
            return  # rescued: used, pinned or busy since the decision
        self._records.move(m, ModelState.EVICTING)
        await self.drain(m)
        if not self._records.holds(m):
            return  # it crashed while draining; the crash event said so
        before = m.memory_bytes
        if m.backend is not None:
            await m.backend.stop()
        self._records.take_backend(m)
        self._records.forget(m)
        kind = "unload" if reason is EvictReason.MANUAL else "evict"
        self._events.emit(kind, m.name, reason.value, memory_before=before, memory_after=0)
