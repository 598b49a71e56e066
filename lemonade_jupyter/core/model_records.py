"""The live models' records and their one writer.

Owns ``_models`` (name → :class:`~.live_model.LiveModel`, entries that still wait for a slot
included), every field of each record, the change signals and the running transitions
(:class:`~.transitions.Transitions`). Everyone else reads a record and asks this class to
change it: the load sequence (:mod:`.load_sequence`), the departures (:mod:`.departures`),
the table (:mod:`.model_table`) and, through the table, the supervisor. Each write is one
small method here, named for what it means, and each notifies whoever waits: the model's own
signal and the table's ("any model changed"). ``tests/test_single_writer.py`` holds every
other module to reading. Written only on the router's event loop.

The lease and slot accounting lives here too, because it is writes of records: a lease counts
a request in flight (and in one of the backend's parallel slots), a waiting request holds a
place in the model's queue (the rules are :mod:`.request_slots`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

from . import request_slots
from .backend import Backend
from .catalog import ModelSpec
from .effects import Effects
from .fit_admission import FitPlan
from .lifecycle import ChangeSignal, ModelState, TransitionKind
from .live_model import LiveModel, ModelSnapshot
from .memory import MemorySample
from .memory_sources import ModelMemory
from .options import LoadOptions
from .preferences import ModelPreferences
from .transitions import Transitions


class ModelRecords:
    """The live models' records, their signals and transitions; the one writer of each."""

    def __init__(self, *, preferences: ModelPreferences, effects: Effects) -> None:
        self._prefs = preferences
        self._effects = effects
        #: Wakes whoever waits for "any model changed"; each model has its own signal too.
        self.changes = ChangeSignal()
        self._models: dict[str, LiveModel] = {}
        self.transitions = Transitions(self.changes)

    # ------------------------------------------------------------------ signals
    def changed(self, m: LiveModel) -> None:
        """Wake the waiters of ``m`` and those of any model."""
        m.changes.notify()
        self.changes.notify()

    def notify_all(self) -> None:
        """Something about every model changed (the router stops, the settings changed)."""
        for m in list(self._models.values()):
            m.changes.notify()
        self.changes.notify()

    # ------------------------------------------------------------------ queries
    def entry(self, name: str) -> LiveModel | None:
        """The entry of ``name``, admitted or still waiting for a slot, else None."""
        return self._models.get(name)

    def holds(self, m: LiveModel) -> bool:
        """Whether ``m`` is still the entry of its name (not forgotten nor replaced)."""
        return self._models.get(m.name) is m

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

    def others(self, m: LiveModel) -> list[LiveModel]:
        """The admitted models besides ``m``."""
        return [x for x in self._models.values() if x is not m and x.admitted]

    def backend_pids(self) -> list[int]:
        """The process ids of the backends (what memory samples are attributed by)."""
        return [m.backend.pid for m in self._models.values()
                if m.backend is not None and m.backend.pid is not None]

    # ------------------------------------------------------------------ transitions
    def start_transition(self, m: LiveModel, kind: TransitionKind,
                         coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start ``m``'s transition; its end wakes the model's own waiters too."""
        return self.transitions.start(m.name, kind, self._notifying(m, coro))

    async def run_transition(self, m: LiveModel, kind: TransitionKind,
                             coro: Coroutine[Any, Any, None]) -> None:
        """Start ``coro`` unless a transition runs for ``m``; await whichever runs."""
        current = self.transitions.current(m.name)
        if current is not None:
            coro.close()  # never started: closed here, before a wrapper could hide it
            await asyncio.shield(current.task)
            return
        await asyncio.shield(self.start_transition(m, kind, coro))

    async def _notifying(self, m: LiveModel, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        finally:
            self.changed(m)

    # ------------------------------------------------------------------ writes
    def add(self, spec: ModelSpec, pinned: bool | None, options: LoadOptions,
            given: frozenset[str]) -> LiveModel:
        """A new entry for ``spec``, not yet admitted, starting with the options asked for."""
        if pinned is not None:
            self._prefs.set_pinned(spec.name, pinned)
        m = LiveModel(spec=spec, preferences=self._prefs)
        m.pending_options = self._prefs.options(spec.name).merged(options, given)
        self._models[spec.name] = m
        return m

    def admit(self, m: LiveModel) -> None:
        """``m`` has a slot in its pool: it counts against the pool from now on."""
        m.admitted = True
        self.changed(m)

    def apply_plan(self, m: LiveModel, plan: FitPlan) -> None:
        m.placement, m.estimate_bytes, m.ctx_size = (
            plan.placement, plan.estimate_bytes, plan.ctx_size)

    def set_pending(self, m: LiveModel, options: LoadOptions) -> None:
        """The options the next start of ``m`` runs with (remembered once it succeeds)."""
        m.pending_options = options

    def record_load_delta(self, m: LiveModel, before: MemorySample,
                          after: MemorySample) -> None:
        """Each of ``m``'s GPUs' change of used memory across its start."""
        m.load_delta = {}
        for uuid in m.placement.uuids:
            was, now = before.device(uuid), after.device(uuid)
            if was is not None and now is not None:
                m.load_delta[uuid] = max(0, now.used - was.used)

    def install(self, m: LiveModel, backend: Backend) -> None:
        """``backend`` serves ``m`` now; its exit will be reported (:class:`~.effects.Effects`)."""
        m.backend = backend
        if m.pending_options is not None:  # a start with them succeeded: remember them
            self._prefs.set_options(m.name, m.pending_options)
            m.pending_options = None
        m.load_duration_ms = backend.load_duration_ms
        m.memory = ModelMemory()  # not measured yet: the next sample attributes the new one
        self.move(m, ModelState.READY)
        backend.exited.add_done_callback(
            lambda _f: self._effects.backend_exited(m, backend))

    def move(self, m: LiveModel, new: ModelState) -> None:
        """``m``'s lifecycle moves to ``new``."""
        m.set_state(new)  # checks the lifecycle table, wakes the model's waiters
        self.changes.notify()

    def take_backend(self, m: LiveModel) -> Backend | None:
        """Detach ``m``'s backend, to stop it (the model stays in the table)."""
        old, m.backend = m.backend, None
        self.changed(m)
        return old

    def mark_downsized(self, m: LiveModel, freed: int | None) -> None:
        """``m``'s backend is stopped, its slot kept; ``freed``: the bytes it held, if known."""
        m.memory_freed_bytes = freed
        self.move(m, ModelState.DOWNSIZED)  # its memory_bytes reads 0 from now on

    def mark_used(self, m: LiveModel) -> None:
        """``m`` was used now (its place in the LRU order)."""
        m.touch()

    @contextlib.contextmanager
    def waiting(self, m: LiveModel) -> Iterator[None]:
        """Count a caller waiting on ``m``'s transition: it makes the model busy meanwhile."""
        m.waiters += 1
        try:
            yield
        finally:
            m.waiters -= 1
            self.changed(m)

    def set_memory(self, shares: Iterable[tuple[LiveModel, ModelMemory]]) -> None:
        """Store each model's share of the latest memory sample."""
        for m, memory in shares:
            m.memory = memory

    def forget(self, m: LiveModel) -> None:
        """The one place a model leaves the table (unloaded, failed, crashed, evicted)."""
        m.pending_options = None
        m.set_state(ModelState.UNLOADED)
        if self._models.get(m.name) is m:
            del self._models[m.name]
            self._effects.persist()  # the loaded set changed (a no-op while the router stops)
        self.changed(m)

    def remove_crashed(self, m: LiveModel, backend: Backend) -> bool:
        """Forget ``m`` because ``backend``, its current one, died; False if it is not."""
        if m.backend is not backend:
            return False
        m.backend = None
        self.forget(m)
        return True

    # ------------------------------------------------------------------ leases
    def take_lease(self, m: LiveModel, *, slot: bool) -> Backend:
        """Count one request in flight on ``m`` (and in one of its slots); return its backend.

        The caller checked, with no await since, that ``m`` serves and (for ``slot``) that a
        slot is free."""
        assert m.backend is not None
        m.in_flight += 1
        if slot:
            m.busy_slots += 1
        self.changed(m)
        return m.backend

    def end_lease(self, m: LiveModel, *, slot: bool) -> None:
        """A request on ``m`` ended: it leaves the in-flight count (and its slot)."""
        m.in_flight = max(0, m.in_flight - 1)
        if slot:
            m.busy_slots = max(0, m.busy_slots - 1)
        self.changed(m)

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
        self.changed(m)  # the model is busy now: nothing evicts it under the waiting request
        try:
            while True:
                if not serving():
                    return False
                if request_slots.is_turn_of(m, ticket):
                    return True
                await m.changes.wait()
        finally:
            m.slot_queue.remove(ticket)
            self.changed(m)
