"""Pure decisions of the router: who may go, who goes, and when a pool is all pinned.

Plain functions over :class:`~.live_model.ModelSnapshot` copies, with no awaits and no
logging, so they are unit-tested as tables and cannot block the loop. :func:`may_evict` is the
one rule for "may this model leave now?"; every eviction path asks it (admission, shrinking
the pools, the retry after a failed start, the eviction engine's idle and pressure passes,
explicit unloads).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .lifecycle import ModelState
from .live_model import ModelSnapshot

#: States in which a model can be evicted at once (a loading or evicting one cannot).
SETTLED = frozenset({ModelState.READY, ModelState.IN_USE, ModelState.DOWNSIZED})


class EvictReason(str, enum.Enum):
    """Why a model leaves; the value is the reason in events and metrics."""

    MANUAL = "manual"  # an explicit unload: a pin only blocks *automatic* eviction
    LRU = "lru"  # a fresh load needs the slot, or the slots were lowered
    FIT = "fit"  # a fresh load needs the memory
    RETRY = "retry"  # a failed start is retried with the memory of unpinned models freed
    IDLE = "idle"
    PRESSURE = "pressure"


def may_evict(model: ModelSnapshot, reason: EvictReason) -> bool:
    """The one eviction rule: may ``model`` be evicted now, for ``reason``?

    Only a settled model (ready, in use or downsized) can go. An explicit unload takes pinned
    and busy models too (it waits for their requests to finish). Every automatic reason
    skips pinned models and busy ones: requests in flight, or callers about to take a lease.
    """
    if model.state not in SETTLED:
        return False
    if reason is EvictReason.MANUAL:
        return True
    return not model.pinned and not model.busy


def may_downsize(model: ModelSnapshot) -> bool:
    """A downsize is an idle eviction that keeps the slot: only a ready model holds memory."""
    return model.state is ModelState.READY and may_evict(model, EvictReason.IDLE)


@dataclass(frozen=True)
class Admission:
    """What admitting one fresh model into its pool requires right now.

    Exactly one of: ``admit`` (a slot is free), ``victim`` (evict this idle model, then look
    again), ``wait`` (every evictable model is busy or in transition: wait for a change),
    ``all_pinned`` (refuse with 409).
    """

    admit: bool = False
    victim: ModelSnapshot | None = None
    wait: bool = False
    all_pinned: bool = False


def pool(models: Iterable[ModelSnapshot], model_type: str) -> list[ModelSnapshot]:
    """The admitted models of one type (loading ones included: they hold their slot)."""
    return [m for m in models if m.admitted and m.type == model_type]


def admission(members: Sequence[ModelSnapshot], slots: int) -> Admission:
    """Decide how a fresh load gets into a pool of ``slots`` (-1 unlimited)."""
    if slots < 0 or len(members) < slots:
        return Admission(admit=True)
    if all(m.pinned for m in members):
        return Admission(all_pinned=True)
    evictable = [m for m in members if may_evict(m, EvictReason.LRU)]
    if evictable:
        return Admission(victim=lru(evictable))
    return Admission(wait=True)


def lru(models: Sequence[ModelSnapshot]) -> ModelSnapshot:
    """The least recently used model of a non-empty sequence."""
    return min(models, key=lambda m: m.last_use)


def shrink_victims(members: Sequence[ModelSnapshot], slots: int) -> list[ModelSnapshot]:
    """Unpinned models that must leave, LRU first, so the pool fits ``slots`` (pins are kept).

    The caller evicts those that :func:`may_evict` allows now and waits for the others.
    """
    if slots < 0 or len(members) <= slots:
        return []
    excess = len(members) - slots
    unpinned = sorted((m for m in members if not m.pinned), key=lambda m: m.last_use)
    return unpinned[:excess]


def retry_victims(models: Iterable[ModelSnapshot], failed: str) -> list[ModelSnapshot]:
    """Everyone who may go to give a failed start of ``failed`` the most memory for its retry."""
    return [m for m in models
            if m.name != failed and m.admitted and may_evict(m, EvictReason.RETRY)]


@dataclass(frozen=True)
class Fit:
    """Whether a model that needs ``needed`` bytes on one device gets them, and at what cost.

    ``fits`` with ``victims``: evict those (LRU first), as one decision, and it fits.
    ``fits`` False: even evicting everyone who may go is not enough (pinned or busy models,
    or other processes, hold the rest): evict nothing.
    """

    fits: bool
    victims: tuple[ModelSnapshot, ...] = ()
    needed: int = 0
    free: int = 0
    pinned: int = 0


def fit(needed: int, free: int, members: Sequence[ModelSnapshot],
        held: Mapping[str, int]) -> Fit:
    """Make room for ``needed`` bytes where ``free`` are free, among ``members`` of the device.

    ``held`` gives what each member holds on the device. Victims are the least recently used
    members that :func:`may_evict` lets go for ``fit``, taken until the room suffices.
    """
    pinned = sum(held.get(m.name, 0) for m in members if m.pinned)
    if needed <= free:
        return Fit(True, (), needed, free, pinned)
    victims: list[ModelSnapshot] = []
    room = free
    for m in sorted((m for m in members if may_evict(m, EvictReason.FIT)),
                    key=lambda m: m.last_use):
        victims.append(m)
        room += held.get(m.name, 0)
        if needed <= room:
            return Fit(True, tuple(victims), needed, free, pinned)
    return Fit(False, (), needed, free, pinned)


def pressure_score(model: ModelSnapshot, now: float, weight: float) -> float:
    """How much we prefer to evict ``model`` under memory pressure (higher = sooner).

    ``idle_ms / (load_duration_ms × evict_weight_factor)``: long idle and cheap to reload go
    first; a large weight protects a model.
    """
    load_ms = max(model.load_duration_ms, 1.0)
    return (model.idle_s(now) * 1000.0) / (load_ms * max(weight, 1e-9))
