"""``ctx_size: -1`` with a real llama-server: the trained context, capped under a RAM budget.

llama-server's own ``/props`` (``default_generation_settings.n_ctx``) says which context it
really runs with.
"""

from __future__ import annotations

from lemonade_jupyter.core.catalog import default_model_path
from lemonade_jupyter.core.gguf_facts import read_facts
from lemonade_jupyter.core.options import LoadOptions

from .conftest import events

MIB = 1024 * 1024


async def served_n_ctx(router, name: str) -> int:
    backend = router.get_live(name).backend
    resp = await router.http.get(f"{backend.url}/props", headers=backend.auth_headers())
    resp.raise_for_status()
    return int(resp.json()["default_generation_settings"]["n_ctx"])


async def test_trained_context_is_capped_to_what_fits_the_memory_budget(catalog, make_router):
    facts = read_facts(default_model_path())
    assert facts.context_length == 8192  # what SmolLM2-135M was trained with
    # Room for 4096 cells and a hundred more: the cap is 4096 (a multiple of 256).
    budget = (facts.estimate_bytes(4096) + 100 * facts.kv_cache_bytes(1)) / MIB
    async with make_router(catalog, memory_budget_mib=budget) as router:
        m = await router.load("user.m1", options=LoadOptions(ctx_size=-1),
                              given=frozenset({"ctx_size"}))
        assert m.ctx_size == 4096 and m.options.ctx_size == -1
        assert await served_n_ctx(router, "user.m1") == 4096
        [capped] = events(router, "context", "user.m1")
        assert capped.reason == "fit"
        assert capped.detail == {"trained": 8192, "ctx_size": 4096}

        # With room for the whole trained context, a reload runs with all of it.
        await router.update_settings({"memory_budget_mib": facts.estimate_bytes(8192) / MIB + 1})
        await router.load("user.m1", options=LoadOptions(ctx_size=1024),
                          given=frozenset({"ctx_size"}))
        await router.load("user.m1", options=LoadOptions(ctx_size=-1),
                          given=frozenset({"ctx_size"}))
        assert await served_n_ctx(router, "user.m1") == 8192
        assert len(events(router, "context")) == 1


async def test_the_room_counts_what_evictable_models_hold_but_not_pinned_ones(
    catalog, make_router
):
    facts = read_facts(default_model_path())
    async with make_router(catalog, max_loaded_models=-1) as router:
        await router.load("user.m2", pinned=True)
        await router.memory.sample()
        held = router.get_live("user.m2").memory.ram.bytes
        assert held
        budget = held + facts.estimate_bytes(4096) + 100 * facts.kv_cache_bytes(1)
        await router.update_settings({"memory_budget_mib": budget / MIB})
        # Pinned: what it holds is not room for the new model, which gets 4096.
        m1 = await router.load("user.m1", options=LoadOptions(ctx_size=-1),
                               given=frozenset({"ctx_size"}))
        assert m1.ctx_size == 4096 and router.get_live("user.m2") is not None
        await router.unload("user.m1")
        # Unpinned and idle, it may be evicted for the fit: the whole trained context fits.
        await router.set_pinned("user.m2", False)
        m1 = await router.load("user.m1", options=LoadOptions(ctx_size=-1),
                               given=frozenset({"ctx_size"}))
        assert m1.ctx_size == 8192 and await served_n_ctx(router, "user.m1") == 8192
        assert router.get_live("user.m2") is None
        [evicted] = events(router, "evict", "user.m2")
        assert evicted.reason == "fit"


async def test_trained_context_is_capped_to_a_gpus_room(default_model_file):
    """On a GPU the room is its free memory less the reserve (no process: placement only)."""
    from lemonade_jupyter.core.catalog import ModelSpec
    from lemonade_jupyter.core.fit_admission import FitAdmission
    from lemonade_jupyter.core.live_model import LiveModel
    from lemonade_jupyter.core.memory import DeviceMemory, MemorySample
    from lemonade_jupyter.core.preferences import ModelPreferences
    from lemonade_jupyter.core.settings import RouterSettings

    facts = read_facts(default_model_file)
    reserve = 512 * MIB
    used = 3 * 1024 * MIB
    total = used + reserve + facts.estimate_bytes(2048) + 100 * facts.kv_cache_bytes(1)
    sample = MemorySample("nvml", (DeviceMemory("GPU", total, used, uuid="GPU-0"),))
    prefs = ModelPreferences()
    prefs.set_options("user.m1", LoadOptions(ctx_size=-1))
    m = LiveModel(spec=ModelSpec("user.m1", default_model_file), preferences=prefs)
    fit = FitAdmission(lambda: RouterSettings(gpu_memory_reserve_mib=512.0), lambda: True)
    wanted = await fit.resolve_context(m)
    assert wanted == 8192 and m.ctx_size is None  # a planner: it decides, the table applies
    plan = await fit.place(m, wanted, [], sample)
    assert plan.placement.uuids == ("GPU-0",)
    assert plan.ctx_size == 2048  # 2048 + 100 cells fit: rounded down to 256s
    assert plan.estimate_bytes == facts.estimate_bytes(2048)
    assert m.placement.uuids == () and m.estimate_bytes is None  # nothing written
