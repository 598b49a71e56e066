"""A model the router holds: its slot, state, backend and usage statistics.

A record with one writer: :class:`~.model_records.ModelRecords` (the table's records) is the
only module that assigns its fields or calls its mutating methods (:meth:`LiveModel.set_state`,
:meth:`LiveModel.touch`), which ``tests/test_single_writer.py`` checks on the source. Planners
read it and return decisions; the table applies them.

Its pin and load options are views of :class:`~.preferences.ModelPreferences` (one owner;
a start in progress carries its new options until it succeeds). Derived values are
properties, never stored: ``in_use`` (from the in-flight count), ``device`` and
``memory_bytes`` (from its placement and its attributed memory).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field, replace

from .backend import Backend
from .catalog import ModelSpec
from .lifecycle import ChangeSignal, ModelState, check_move
from .memory import MemorySample
from .memory_sources import ModelMemory
from .options import LoadOptions
from .placement import Placement
from .preferences import ModelPreferences


@dataclass(frozen=True)
class ModelSnapshot:
    """What planners, metrics and views read: a copy, taken between two awaits."""

    name: str
    type: str
    state: ModelState
    pinned: bool
    admitted: bool
    in_flight: int
    busy: bool
    last_use: float
    load_duration_ms: float
    options: LoadOptions
    memory_bytes: int | None
    device: str
    #: Device keys where its memory counts: GPU UUIDs, or "cpu".
    devices: tuple[str, ...] = ("cpu",)
    #: Requests waiting in the router for one of its parallel slots.
    queued: int = 0

    def idle_s(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.monotonic()) - self.last_use)


@dataclass(frozen=True)
class RouterSnapshot:
    """The admitted models, the model types and the latest memory sample, as one copy."""

    models: tuple[ModelSnapshot, ...]
    types: tuple[str, ...]
    memory: MemorySample | None


@dataclass(eq=False)
class LiveModel:
    """One slot of a pool. Written only by :class:`~.model_records.ModelRecords`, on the router's
    event loop.

    ``admitted`` is False while a fresh load still waits for a slot; such an entry does not
    count against its pool. ``in_flight`` counts requests between acquire and release;
    ``waiters`` counts callers waiting on its transition (they are about to use it).
    ``busy_slots`` counts the leases that hold one of its backend's parallel slots, and
    ``slot_queue`` holds, in arrival order, the requests that wait for one (the rules are in
    :mod:`.request_slots`; the table writes both). ``changes`` is this model's own change
    signal: it wakes whoever waits for something about this model only.
    """

    spec: ModelSpec
    preferences: ModelPreferences
    changes: ChangeSignal = field(default_factory=ChangeSignal)
    _state: ModelState = ModelState.LOADING
    backend: Backend | None = None
    admitted: bool = False
    in_flight: int = 0
    waiters: int = 0
    last_use: float = field(default_factory=time.monotonic)
    last_use_wall: float = field(default_factory=time.time)
    load_duration_ms: float = 0.0
    #: What its last downsize freed (None: not measured).
    memory_freed_bytes: int | None = None
    #: Options of a start in progress; remembered in the preferences once it succeeds.
    pending_options: LoadOptions | None = None
    #: Where its backend runs, and what the router expects it to need there (None: unknown).
    placement: Placement = field(default_factory=Placement)
    estimate_bytes: int | None = None
    #: The context length its next (or current) start runs with: the ``ctx_size`` option
    #: resolved (-1: the trained context, capped to what fits); None before its first start.
    ctx_size: int | None = None
    #: Its memory per device with the source of each figure, attributed from the latest
    #: sample of its current backend (``memory_bytes`` is the total where it runs); the change
    #: of each GPU's used memory across its load.
    memory: ModelMemory = field(default_factory=ModelMemory)
    load_delta: dict[str, int] = field(default_factory=dict)
    busy_slots: int = 0
    slot_queue: collections.deque[object] = field(default_factory=collections.deque)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def pinned(self) -> bool:
        return self.preferences.pinned(self.name)

    @property
    def options(self) -> LoadOptions:
        """The options of the start in progress, else the remembered ones."""
        if self.pending_options is not None:
            return self.pending_options
        return self.preferences.options(self.name)

    @property
    def state(self) -> ModelState:
        """The stored state, with READY shown as IN_USE while requests run."""
        if self._state is ModelState.READY and self.in_flight > 0:
            return ModelState.IN_USE
        return self._state

    @property
    def stored_state(self) -> ModelState:
        return self._state

    def set_state(self, new: ModelState) -> None:
        """The only writer of the state: checks the lifecycle table, then wakes waiters."""
        if new is self._state:
            return
        check_move(self.name, self._state, new)
        self._state = new
        self.changes.notify()

    @property
    def device(self) -> str:
        """Where it runs: the first GPU it holds memory on, else its placement's first device."""
        return (self.memory.gpu_keys(self.placement) or self.placement.device_keys)[0]

    @property
    def memory_bytes(self) -> int | None:
        """What it holds where it runs (None: not measured since its backend started; 0 once
        downsized)."""
        if self._state is ModelState.DOWNSIZED:
            return 0
        return self.memory.total_for(self.placement)

    @property
    def is_busy(self) -> bool:
        """Requests run on it, wait for one of its slots, or wait to take a lease after its
        load."""
        return self.in_flight > 0 or self.waiters > 0 or bool(self.slot_queue)

    def touch(self) -> None:
        """Count a use for LRU (load, repeat load, start of a proxied request)."""
        self.last_use = time.monotonic()
        self.last_use_wall = time.time()

    def idle_s(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.monotonic()) - self.last_use)

    def snapshot(self) -> ModelSnapshot:
        return ModelSnapshot(
            name=self.name, type=self.type, state=self.state, pinned=self.pinned,
            admitted=self.admitted, in_flight=self.in_flight, busy=self.is_busy,
            last_use=self.last_use, load_duration_ms=self.load_duration_ms,
            options=self.options, memory_bytes=self.memory_bytes, device=self.device,
            devices=self.devices(), queued=len(self.slot_queue),
        )

    def start_options(self) -> LoadOptions:
        """The options a start passes to the engine: ``ctx_size`` resolved."""
        if self.ctx_size is None or self.ctx_size == self.options.ctx_size:
            return self.options
        return replace(self.options, ctx_size=self.ctx_size)

    def devices(self) -> tuple[str, ...]:
        """Device keys where its memory counts: its placement's, plus GPUs NVML saw it on."""
        return tuple(dict.fromkeys(self.placement.device_keys + tuple(self.memory.gpu)))

    def held_on(self, device_key: str) -> int:
        """Bytes it holds on a device: measured when known, else its estimate's share."""
        measured = self.memory.on(device_key)
        if measured is not None:
            return measured
        if self.estimate_bytes is None or device_key not in self.placement.device_keys:
            return 0
        return int(self.estimate_bytes * self.placement.share(device_key))
