"""The router's pure decisions as tables: admission, shrinking, pressure ranking."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.decisions import (
    EvictReason, admission, lru, may_downsize, may_evict, pool, pressure_score, retry_victims,
    shrink_victims,
)
from lemonade_jupyter.core.lifecycle import ModelState
from lemonade_jupyter.core.live_model import ModelSnapshot
from lemonade_jupyter.core.options import LoadOptions

R, U, D, L, E = (ModelState.READY, ModelState.IN_USE, ModelState.DOWNSIZED,
                 ModelState.LOADING, ModelState.EVICTING)


def live(name: str, last_use: float, *, pinned: bool = False, state: ModelState = R,
         busy: bool = False, labels: tuple[str, ...] = ("llm",), admitted: bool = True,
         load_ms: float = 1000.0) -> ModelSnapshot:
    spec = ModelSpec(name=name, checkpoint="/x.gguf", labels=labels)
    return ModelSnapshot(
        name=name, type=spec.type, state=state, pinned=pinned, admitted=admitted,
        in_flight=1 if busy else 0, busy=busy, last_use=last_use, load_duration_ms=load_ms,
        options=LoadOptions(), memory_bytes=None, device="cpu",
    )


def names(models):
    return [m.name for m in models]


# (members as (name, last_use, pinned, state, busy), slots) -> expected outcome
ADMISSION = [
    ("empty pool, one slot", [], 1, "admit"),
    ("free slot", [("a", 1, False, R, False)], 2, "admit"),
    ("unlimited", [("a", 1, False, R, False)] * 5, -1, "admit"),
    ("full: LRU victim", [("a", 2, False, R, False), ("b", 1, False, R, False)], 2, "victim:b"),
    ("LRU skips pinned", [("a", 2, False, R, False), ("b", 1, True, R, False)], 2, "victim:a"),
    ("downsized is evictable", [("a", 2, False, R, False), ("b", 1, False, D, False)], 2,
     "victim:b"),
    ("all pinned", [("a", 1, True, R, False), ("b", 2, True, U, True)], 2, "all_pinned"),
    ("pinned + busy unpinned: wait", [("a", 1, True, R, False), ("b", 2, False, U, True)], 2,
     "wait"),
    ("busy only: wait", [("a", 1, False, U, True)], 1, "wait"),
    ("loading only: wait", [("a", 1, False, L, False)], 1, "wait"),
    ("evicting only: wait", [("a", 1, False, E, False)], 1, "wait"),
    ("idle beats busy even if newer", [("a", 1, False, U, True), ("b", 9, False, R, False)], 2,
     "victim:b"),
]


@pytest.mark.parametrize("members,slots,expected", [c[1:] for c in ADMISSION],
                         ids=[c[0] for c in ADMISSION])
def test_admission_table(members, slots, expected):
    pool_ = [live(n, t, pinned=p, state=s, busy=b) for n, t, p, s, b in members]
    decision = admission(pool_, slots)
    outcome = ("admit" if decision.admit else "all_pinned" if decision.all_pinned
               else "wait" if decision.wait else f"victim:{decision.victim.name}")
    assert outcome == expected
    # exactly one of the four outcomes
    assert sum([decision.admit, decision.all_pinned, decision.wait,
                decision.victim is not None]) == 1


SHRINK = [
    ("fits", [("a", 1, False), ("b", 2, False)], 2, []),
    ("unlimited", [("a", 1, False), ("b", 2, False)], -1, []),
    ("one over", [("a", 3, False), ("b", 1, False), ("c", 2, False)], 2, ["b"]),
    ("LRU order", [("a", 3, False), ("b", 1, False), ("c", 2, False)], 1, ["b", "c"]),
    ("pins kept", [("a", 3, False), ("b", 1, True), ("c", 2, False)], 1, ["c", "a"]),
    ("all pinned: nothing", [("a", 1, True), ("b", 2, True)], 1, []),
]


@pytest.mark.parametrize("members,slots,expected", [c[1:] for c in SHRINK],
                         ids=[c[0] for c in SHRINK])
def test_shrink_victims_table(members, slots, expected):
    pool_ = [live(n, t, pinned=p) for n, t, p in members]
    assert names(shrink_victims(pool_, slots)) == expected


def test_pool_counts_admitted_models_of_one_type_only():
    models = [live("a", 1), live("b", 2, admitted=False), live("e", 3, labels=("embeddings",)),
              live("r", 4, labels=("reranking",))]
    assert names(pool(models, "llm")) == ["a"]
    assert names(pool(models, "embedding")) == ["e"]
    assert names(pool(models, "reranking")) == ["r"]


def test_lru_picks_oldest_use():
    assert lru([live("a", 5), live("b", 2), live("c", 9)]).name == "b"


PRESSURE = [
    # (idle_s, load_ms, weight) -> score
    (10.0, 1000.0, 1.0, 10.0),
    (10.0, 1000.0, 2.0, 5.0),
    (10.0, 500.0, 1.0, 20.0),
    (0.0, 1000.0, 1.0, 0.0),
    (1.0, 0.0, 1.0, 1000.0),  # an unknown load time counts as 1 ms, never divides by zero
]


@pytest.mark.parametrize("idle_s,load_ms,weight,score", PRESSURE)
def test_pressure_score_table(idle_s, load_ms, weight, score):
    now = 100.0
    m = live("a", now - idle_s, load_ms=load_ms)
    assert pressure_score(m, now, weight) == pytest.approx(score)


def test_pressure_score_prefers_long_idle_and_cheap_reload():
    now = 1000.0
    cheap_idle = live("cheap", now - 100, load_ms=100)
    costly_idle = live("costly", now - 100, load_ms=10_000)
    recent = live("recent", now - 0.5, load_ms=100)
    # scores: cheap 100 s / 0.1 s = 1000, costly 100 / 10 = 10, recent 0.5 / 0.1 = 5
    ranked = sorted([costly_idle, recent, cheap_idle],
                    key=lambda m: pressure_score(m, now, 1.0), reverse=True)
    assert names(ranked) == ["cheap", "costly", "recent"]


# The one eviction rule, as a table of model situations × reasons.
DS, UN = ModelState.DOWNSIZING, ModelState.UNLOADED
SITUATIONS = [  # (label, state, pinned, busy)
    ("ready", R, False, False),
    ("ready pinned", R, True, False),
    ("in use", U, False, True),
    ("in use pinned", U, True, True),
    ("ready with a caller waiting for its lease", R, False, True),
    ("downsized", D, False, False),
    ("downsized pinned", D, True, False),
    ("loading", L, False, False),
    ("downsizing", DS, False, False),
    ("evicting", E, False, False),
    ("unloaded", UN, False, False),
]
#: One letter per situation above, in order: y = may be evicted now, n = may not.
MAY_EVICT = {
    EvictReason.MANUAL: "yyyyyyynnnn",
    EvictReason.LRU: "ynnnnynnnnn",
    EvictReason.FIT: "ynnnnynnnnn",
    EvictReason.RETRY: "ynnnnynnnnn",
    EvictReason.IDLE: "ynnnnynnnnn",
    EvictReason.PRESSURE: "ynnnnynnnnn",
}
MAY_DOWNSIZE = "ynnnnnnnnnn"


@pytest.mark.parametrize("reason", list(EvictReason), ids=[r.value for r in EvictReason])
def test_may_evict_table(reason):
    assert set(MAY_EVICT) == set(EvictReason), "every reason has a row"
    got = "".join("y" if may_evict(live(label, 1.0, pinned=p, state=s, busy=b), reason) else "n"
                  for label, s, p, b in SITUATIONS)
    assert got == MAY_EVICT[reason], list(zip([s[0] for s in SITUATIONS], got))


def test_may_downsize_table():
    got = "".join("y" if may_downsize(live(label, 1.0, pinned=p, state=s, busy=b)) else "n"
                  for label, s, p, b in SITUATIONS)
    assert got == MAY_DOWNSIZE


def test_retry_victims_are_the_others_that_may_go():
    models = [live("failed", 1), live("idle", 2), live("pinned", 3, pinned=True),
              live("busy", 4, busy=True, state=U), live("waiting", 5, admitted=False)]
    assert names(retry_victims(models, "failed")) == ["idle"]
