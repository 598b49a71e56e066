"""The eviction engine: downsize idle models, unload long-idle ones, free memory under pressure.

Opt-in (``auto_evict`` globally, or per model as a load option). One evaluation:

1. **Tier 2, idle**: a model idle for ``evict_idle_timeout`` is unloaded (reason ``idle``).
2. **Tier 1, idle**: a model idle for ``downsize_idle_timeout`` is downsized (reason ``idle``):
   its backend process stops but it keeps its slot, pin, options and statistics, and its next
   request restores it. Measured on the default model (``python -m benchmarks``, section 6):
   stopping frees all of its ~173 MB, llama-server's sleep mode keeps ~38 MB (frees 79%); the
   first chat after a restart took 483 ms against 395 ms after a wake from sleep. We take the
   memory: a downsize exists to free it, and the wake is only ~0.1 s faster.
3. **Tier 2, pressure**: when the fullest memory device is at or over
   ``auto_evict_threshold_pct``, one model is unloaded: the highest
   ``idle_ms / (load_duration_ms × evict_weight_factor)`` (reason ``pressure``).

Pinned and busy models are never touched. Each decision waits ``eviction_grace_s`` before it
commits; a request that arrives meanwhile (it counts as a use) rescues the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .decisions import pressure_score
from .live_model import LiveModel, ModelState

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger(__name__)

#: A client polled /health or streams events within this many seconds: keep sampling memory.
WATCHER_WINDOW_S = 15.0
#: An eviction reports memory from a sample at most this old (taken before it commits).
MEASURE_MAX_AGE_S = 0.5
#: The background loop's longest nap between looks at its intervals.
LOOP_NAP_S = 1.0


@dataclass(frozen=True)
class Decision:
    """One planned action of an evaluation (the snapshot it was made on)."""

    model: str
    action: str  # "downsize" | "evict"
    reason: str  # "idle" | "pressure"
    score: float | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"model": self.model, "action": self.action,
                                   "reason": self.reason}
        if self.score is not None:
            data["score"] = round(self.score, 3)
        return data


class EvictionEngine:
    """Evaluates the router's models periodically (or on demand) and acts on the decisions."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self.last_watch = 0.0

    # -- per-model effective options ------------------------------------------------------
    def _enabled(self, m: LiveModel) -> bool:
        opt = m.options.auto_evict
        return self._router.settings.auto_evict if opt is None else opt

    def _downsize_after(self, m: LiveModel) -> float:
        v = m.options.downsize_idle_timeout
        return self._router.settings.downsize_idle_timeout if v is None else v

    def _evict_after(self, m: LiveModel) -> float:
        v = m.options.evict_idle_timeout
        return self._router.settings.evict_idle_timeout if v is None else v

    def _weight(self, m: LiveModel) -> float:
        v = m.options.evict_weight_factor
        return self._router.settings.evict_weight_factor if v is None else v

    def any_enabled(self) -> bool:
        return self._router.settings.auto_evict or any(
            m.options.auto_evict for m in self._router.live_models()
        )

    # -- decisions (pure, on a snapshot) ------------------------------------------------------
    def plan(self, pressure: float | None, now: float | None = None) -> list[Decision]:
        """What one evaluation would do; ``pressure`` None means an idle-only pass."""
        now = time.monotonic() if now is None else now
        candidates = [
            m for m in self._router.live_models()
            if self._enabled(m) and not m.pinned and not m.is_busy
            and m.state in (ModelState.READY, ModelState.DOWNSIZED)
        ]
        decisions: list[Decision] = []
        taken: set[str] = set()
        for m in candidates:
            idle = m.idle_s(now)
            if idle >= self._evict_after(m):
                decisions.append(Decision(m.name, "evict", "idle"))
                taken.add(m.name)
            elif m.state is ModelState.READY and idle >= self._downsize_after(m):
                decisions.append(Decision(m.name, "downsize", "idle"))
                taken.add(m.name)
        threshold = self._router.settings.auto_evict_threshold_pct
        if pressure is not None and pressure >= threshold:
            # Only a model that still holds memory frees any when unloaded.
            holders = [m for m in candidates
                       if m.name not in taken and m.state is ModelState.READY]
            if holders:
                scored = [(pressure_score(m, now, self._weight(m)), m) for m in holders]
                score, victim = max(scored, key=lambda pair: pair[0])
                decisions.append(Decision(victim.name, "evict", "pressure", score))
        return decisions

    # -- acting ------------------------------------------------------------------------------
    async def evaluate(self, pressure: float | None) -> list[Decision]:
        """Plan on a snapshot, wait the grace period, then commit what was not rescued."""
        router = self._router
        planned = self.plan(pressure)
        if not planned:
            return []
        marks = {d.model: self._use_mark(d.model) for d in planned}
        grace = router.settings.eviction_grace_s
        if grace > 0:
            await asyncio.sleep(grace)
        if any(d.action == "evict" for d in planned):
            # Measure now, so the eviction events report the memory really held (the model's
            # figure is otherwise only as fresh as the last /health poll, or unknown).
            await router.memory.fresh(MEASURE_MAX_AGE_S)
        done = []
        for decision in planned:
            m = router.get_live(decision.model)
            if m is None or self._use_mark(decision.model) != marks[decision.model]:
                continue  # used (or gone) since the decision: rescued
            if m.pinned or m.is_busy:
                continue
            if decision.action == "downsize":
                if await router.downsize(m, decision.reason) is not None or (
                    m.state is ModelState.DOWNSIZED
                ):
                    done.append(decision)
            else:
                await router.evict(m, decision.reason)
                if router.get_live(decision.model) is not m:
                    done.append(decision)
        return done

    def _use_mark(self, name: str) -> tuple[float, int] | None:
        m = self._router.get_live(name)
        return (m.last_use, m.in_flight + m.waiters) if m is not None else None

    def note_watcher(self) -> None:
        """A client looked at memory (``/health``, the event stream): keep sampling a while."""
        self.last_watch = time.monotonic()

    def sampling_needed(self) -> bool:
        watching = (time.monotonic() - self.last_watch < WATCHER_WINDOW_S
                    or self._router.events.subscriber_count > 0)
        return watching or self.any_enabled()

    async def run(self) -> None:
        """Background loop: sample memory while needed, evaluate while auto-evict is on.

        It naps at most ``LOOP_NAP_S`` at a time and compares against the intervals each time,
        so an interval changed through ``/internal/set`` applies within a second (not after
        the old interval ran out).
        """
        router = self._router
        last_sample = last_eval = time.monotonic()  # the first round after one interval
        while True:
            settings = router.settings
            await asyncio.sleep(min(settings.memory_sample_interval_s, LOOP_NAP_S))
            settings = router.settings
            now = time.monotonic()
            if now - last_sample < settings.memory_sample_interval_s:
                continue
            if not self.sampling_needed():
                continue
            last_sample = now
            try:
                sample = await router.memory.sample()
                now = time.monotonic()
                if self.any_enabled() and now - last_eval >= settings.eviction_interval_s:
                    last_eval = now
                    await self.evaluate(sample.pressure)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not end the engine
                log.exception("Eviction engine round failed")
