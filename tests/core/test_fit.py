"""Admission by fit with real llama-server backends on the CPU, under ``memory_budget_mib``.

The budget is about one and a half models: a second model only fits once the first is gone
(evicted with reason ``fit``), unless the first is pinned (409 ``insufficient_memory``, nothing
evicted); a larger budget lets both in. The header estimate is checked against the RSS the
default model really has.
"""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.catalog import default_model_path
from lemonade_jupyter.core.gguf_facts import read_facts
from lemonade_jupyter.errors import InsufficientMemoryError

from tests.helpers.artifacts import write_artifact

from .conftest import events, ready_pid

MIB = 1024 * 1024


async def measured_rss(router, name: str) -> int:
    await router.memory.sample()
    m = router.get_live(name)
    assert m.memory.ram.source == "process_rss"
    return m.memory.ram.bytes


async def test_fit_estimate_from_the_gguf_header_is_above_the_measured_rss_by_a_known_margin(
    catalog, make_router
):
    facts = read_facts(default_model_path())
    async with make_router(catalog) as router:
        ctx = (await router.load("user.m1")).ctx_size  # the default: auto, the trained 8192
        rss = await measured_rss(router, "user.m1")
    estimate = facts.estimate_bytes(ctx)
    write_artifact("fit_estimate.json", {
        "ctx_size": ctx, "weights_mib": round(facts.weights_bytes / MIB, 2),
        "kv_cache_mib": round(facts.kv_cache_bytes(ctx) / MIB, 2),
        "estimate_mib": round(estimate / MIB, 1), "measured_rss_mib": round(rss / MIB, 1),
        "estimate_over_measured": round(estimate / rss, 3),
    })
    # Errs on the side of making room, but not by more than half again.
    assert rss <= estimate <= 1.5 * rss, (estimate / MIB, rss / MIB)


async def test_fit_a_second_model_over_the_budget_evicts_the_lru_unpinned_one(
    catalog, make_router
):
    async with make_router(catalog, max_loaded_models=-1) as router:
        first = await router.load("user.m1")
        budget = (await measured_rss(router, "user.m1")) * 1.5 / MIB
        await router.update_settings({"memory_budget_mib": budget})
        await router.load("user.m2")
        assert router.get_live("user.m1") is None and ready_pid(router, "user.m2")
        [evicted] = events(router, "evict", "user.m1")
        assert evicted.reason == "fit" and first.backend is None
        scraped = router.metrics.render().decode()
        assert 'lemonade_evictions_total{reason="fit"} 1.0' in scraped


async def test_fit_a_pinned_model_is_never_evicted_the_load_gets_409_with_the_figures(
    catalog, make_router
):
    async with make_router(catalog, max_loaded_models=-1) as router:
        await router.load("user.m1", pinned=True)
        rss = await measured_rss(router, "user.m1")
        await router.update_settings({"memory_budget_mib": rss * 1.5 / MIB})
        with pytest.raises(InsufficientMemoryError) as info:
            await router.load("user.m2")
        err = info.value
        body = err.to_body()["error"]
        assert err.status_code == 409 and body["type"] == "insufficient_memory_error"
        assert body["code"] == "insufficient_memory"
        assert body["needed_bytes"] > body["free_bytes"] >= 0
        assert body["pinned_bytes"] == rss
        assert "MiB" in body["message"] and "memory_budget_mib" in body["message"]
        assert ready_pid(router, "user.m1") and router.get_live("user.m2") is None
        assert not events(router, "evict") and not events(router, "load_failed")

        # A budget for both lets both in, nobody evicted.
        await router.update_settings({"memory_budget_mib": rss * 3 / MIB})
        await router.load("user.m2")
        assert ready_pid(router, "user.m1") and ready_pid(router, "user.m2")
        assert not events(router, "evict")


async def test_fit_without_a_budget_reads_no_header_and_evicts_nothing(catalog, make_router):
    async with make_router(catalog, max_loaded_models=-1) as router:
        for name in ("user.m1", "user.m2", "user.m3"):
            await router.load(name)
        assert all(m.estimate_bytes is None for m in router.live_models())
        assert not events(router, "evict")
