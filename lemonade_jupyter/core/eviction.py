"""The eviction engine's plan: downsize idle models, unload long-idle ones, relieve pressure.

Opt-in (``auto_evict`` globally, or per model as a load option). :func:`plan` is a pure
function over a snapshot; the router carries the plan out (after a grace period in which a
request rescues its model). One plan:

1. **Idle, tier 2**: a model idle for ``evict_idle_timeout`` is unloaded (reason ``idle``).
2. **Idle, tier 1**: a model idle for ``downsize_idle_timeout`` is downsized (reason ``idle``):
   its backend process stops but it keeps its slot, pin, options and statistics, and its next
   request restores it. Measured on the default model (``python -m benchmarks``, section 6):
   stopping frees all of its ~173 MB, llama-server's sleep mode keeps ~38 MB (frees 79%); the
   first chat after a restart took 483 ms against 395 ms after a wake from sleep. We take the
   memory: a downsize exists to free it, and the wake is only ~0.1 s faster.
3. **Pressure**: when the fullest memory device is at or over ``auto_evict_threshold_pct``,
   one model is unloaded: the highest ``idle_ms / (load_duration_ms × evict_weight_factor)``
   (reason ``pressure``).

Who may be touched at all is :func:`~.decisions.may_evict`: never a pinned or busy model.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .decisions import EvictReason, may_downsize, may_evict, pressure_score
from .lifecycle import ModelState
from .live_model import ModelSnapshot
from .settings import RouterSettings


class Action(str, enum.Enum):
    DOWNSIZE = "downsize"
    EVICT = "evict"


@dataclass(frozen=True)
class Decision:
    """One planned action, with the use mark of the snapshot it was made on.

    ``mark`` (last use, busy) lets the router see whether the model was used between the plan
    and the commit: a used model is rescued.
    """

    model: str
    action: Action
    reason: EvictReason
    mark: tuple[float, bool]
    score: float | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"model": self.model, "action": self.action.value,
                                   "reason": self.reason.value}
        if self.score is not None:
            data["score"] = round(self.score, 3)
        return data


def use_mark(model: ModelSnapshot) -> tuple[float, bool]:
    return (model.last_use, model.busy)


def enabled_for(model: ModelSnapshot, settings: RouterSettings) -> bool:
    opt = model.options.auto_evict
    return settings.auto_evict if opt is None else opt


def any_enabled(models: Sequence[ModelSnapshot], settings: RouterSettings) -> bool:
    return settings.auto_evict or any(m.options.auto_evict for m in models)


def _per_model(model: ModelSnapshot, settings: RouterSettings, key: str) -> float:
    value = getattr(model.options, key)
    return float(getattr(settings, key) if value is None else value)


def plan(models: Sequence[ModelSnapshot], settings: RouterSettings,
         pressure: float | Mapping[str, float] | None,
         now: float | None = None) -> list[Decision]:
    """What one evaluation would do; ``pressure`` None means an idle-only pass.

    ``pressure`` is the used fraction per device key (GPU UUIDs, ``"cpu"`` for RAM), or one
    figure for every device. A device at or over the threshold loses one of the models whose
    memory is on it: a model on the CPU relieves RAM, not a GPU.
    """
    now = time.monotonic() if now is None else now
    candidates = [m for m in models
                  if m.admitted and enabled_for(m, settings)
                  and may_evict(m, EvictReason.IDLE)]
    decisions: list[Decision] = []
    taken: set[str] = set()
    for m in candidates:
        idle = m.idle_s(now)
        if idle >= _per_model(m, settings, "evict_idle_timeout"):
            decisions.append(Decision(m.name, Action.EVICT, EvictReason.IDLE, use_mark(m)))
            taken.add(m.name)
        elif may_downsize(m) and idle >= _per_model(m, settings, "downsize_idle_timeout"):
            decisions.append(Decision(m.name, Action.DOWNSIZE, EvictReason.IDLE, use_mark(m)))
            taken.add(m.name)
    if pressure is None:
        return decisions
    devices = sorted({d for m in candidates for d in m.devices})
    for device in devices:
        level = pressure if isinstance(pressure, (int, float)) else pressure.get(device)
        if level is None or level < settings.auto_evict_threshold_pct:
            continue
        # Only a model that still holds memory there frees any when unloaded.
        holders = [m for m in candidates
                   if m.name not in taken and device in m.devices
                   and m.state is ModelState.READY and may_evict(m, EvictReason.PRESSURE)]
        if holders:
            scored = [(pressure_score(m, now, _per_model(m, settings, "evict_weight_factor")), m)
                      for m in holders]
            score, victim = max(scored, key=lambda pair: pair[0])
            decisions.append(Decision(victim.name, Action.EVICT, EvictReason.PRESSURE,
                                      use_mark(victim), score))
            taken.add(victim.name)
    return decisions


def rescued(decision: Decision, now: ModelSnapshot | None) -> bool:
    """True when the model was used, became busy or pinned, or left since the plan."""
    if now is None or use_mark(now) != decision.mark:
        return True
    if decision.action is Action.DOWNSIZE:
        return not may_downsize(now)
    return not may_evict(now, decision.reason)
