"""Pure decisions of the router: who gets evicted, and when a pool is all pinned.

Plain functions over snapshots, with no awaits and no logging, so they are unit-tested as
tables and cannot block the loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .live_model import LiveModel, ModelState

#: States that make a model a candidate for automatic eviction.
_SETTLED = frozenset({ModelState.READY, ModelState.IN_USE, ModelState.DOWNSIZED})


@dataclass(frozen=True)
class Admission:
    """What admitting one fresh model into its pool requires right now.

    Exactly one of: ``admit`` (a slot is free), ``victim`` (evict this idle model, then look
    again), ``wait`` (every evictable model is busy or in transition: wait for a change),
    ``all_pinned`` (refuse with 409).
    """

    admit: bool = False
    victim: LiveModel | None = None
    wait: bool = False
    all_pinned: bool = False


def pool(models: Iterable[LiveModel], model_type: str) -> list[LiveModel]:
    """The admitted models of one type (loading ones included: they hold their slot)."""
    return [m for m in models if m.admitted and m.type == model_type]


def admission(members: Sequence[LiveModel], slots: int) -> Admission:
    """Decide how a fresh load gets into a pool of ``slots`` (-1 unlimited)."""
    if slots < 0 or len(members) < slots:
        return Admission(admit=True)
    unpinned = [m for m in members if not m.pinned]
    if not unpinned:
        return Admission(all_pinned=True)
    idle = [m for m in unpinned if m.state in _SETTLED and not m.is_busy]
    if idle:
        return Admission(victim=lru(idle))
    return Admission(wait=True)


def lru(models: Sequence[LiveModel]) -> LiveModel:
    """The least recently used model of a non-empty sequence."""
    return min(models, key=lambda m: m.last_use)


def shrink_victims(members: Sequence[LiveModel], slots: int) -> list[LiveModel]:
    """Unpinned models to evict, LRU first, so the pool fits ``slots`` (pins are kept)."""
    if slots < 0 or len(members) <= slots:
        return []
    excess = len(members) - slots
    unpinned = sorted((m for m in members if not m.pinned), key=lambda m: m.last_use)
    return unpinned[:excess]


def pressure_score(model: LiveModel, now: float, weight: float) -> float:
    """How much we prefer to evict ``model`` under memory pressure (higher = sooner).

    ``idle_ms / (load_duration_ms × evict_weight_factor)``: long idle and cheap to reload go
    first; a large weight protects a model.
    """
    load_ms = max(model.load_duration_ms, 1.0)
    return (model.idle_s(now) * 1000.0) / (load_ms * max(weight, 1e-9))
