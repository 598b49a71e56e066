"""A model the router holds: its slot, pin, state, backend and usage statistics."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .backend import Backend
from .catalog import ModelSpec
from .options import LoadOptions


class ModelState(str, enum.Enum):
    """What a live model is doing; the router is its only writer."""

    LOADING = "loading"
    READY = "ready"
    IN_USE = "in_use"
    DOWNSIZING = "downsizing"
    DOWNSIZED = "downsized"
    EVICTING = "evicting"
    UNLOADED = "unloaded"


#: States in which a request can be sent to the backend right now.
SERVING = frozenset({ModelState.READY, ModelState.IN_USE})


@dataclass(eq=False)
class LiveModel:
    """One slot of a pool. Owned and written by the router's event loop only.

    ``admitted`` is False while a fresh load still waits for a slot; such an entry does not count
    against its pool. ``in_flight`` counts requests between acquire and release; ``waiters``
    counts callers waiting on its transition (they are about to use it).
    """

    spec: ModelSpec
    options: LoadOptions
    pinned: bool = False
    state: ModelState = ModelState.LOADING
    backend: Backend | None = None
    admitted: bool = False
    in_flight: int = 0
    waiters: int = 0
    last_use: float = field(default_factory=time.monotonic)
    last_use_wall: float = field(default_factory=time.time)
    load_duration_ms: float = 0.0
    memory_bytes: int | None = None
    memory_freed_bytes: int | None = None
    device: str = "cpu"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def is_busy(self) -> bool:
        """Requests run on it, or callers wait to take a lease after its load."""
        return self.in_flight > 0 or self.waiters > 0

    def touch(self) -> None:
        """Count a use for LRU (load, repeat load, start of a proxied request)."""
        self.last_use = time.monotonic()
        self.last_use_wall = time.time()

    def idle_s(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.monotonic()) - self.last_use)
