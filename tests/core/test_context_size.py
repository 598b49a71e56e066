"""``ctx_size: auto`` (-1) with a real llama-server: the trained context, capped under a RAM budget;
then the one rule that decides every start's context, with fake facts, NVML and psutil.

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
        assert m.ctx_size == 4096 and m.options.ctx_size == -1  # a synonym of auto (None)
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


# ---------------------------------------------------------------------- the one rule, no process
# FitAdmission decides every start's context; here with fake header facts, a fake NVML sample
# and a fake psutil, so each case is a table row rather than a real load.


def _fake_facts(context_length: int):
    from lemonade_jupyter.core.gguf_facts import GgufFacts
    return GgufFacts(architecture="llama", weights_bytes=100 * MIB, n_layer=30, n_head_kv=3,
                     key_length=64, value_length=64, context_length=context_length)


def _admission(monkeypatch, facts, *, budget_mib=None, offloads=False, available=64 << 30):
    from lemonade_jupyter.core import fit_admission
    from lemonade_jupyter.core.fit_admission import FitAdmission
    from lemonade_jupyter.core.settings import RouterSettings

    monkeypatch.setattr(fit_admission, "read_facts", lambda _path: facts)
    monkeypatch.setattr(fit_admission.psutil, "virtual_memory",
                        lambda: type("VM", (), {"available": available})())
    settings = RouterSettings(gpu_memory_reserve_mib=0.0, memory_budget_mib=budget_mib)
    return FitAdmission(lambda: settings, lambda: offloads)


def _model(ctx_size=None):
    from lemonade_jupyter.core.catalog import ModelSpec
    from lemonade_jupyter.core.live_model import LiveModel
    from lemonade_jupyter.core.preferences import ModelPreferences

    prefs = ModelPreferences()
    prefs.set_options("user.m", LoadOptions(ctx_size=ctx_size))
    return LiveModel(spec=ModelSpec("user.m", "/fake.gguf"), preferences=prefs)


async def _plan(fit, m, sample=None):
    from lemonade_jupyter.core.memory import MemorySample

    wanted = await fit.resolve_context(m)
    if not fit.active():
        return await fit.place_unchecked(m, wanted)
    return await fit.place(m, wanted, [], sample or MemorySample("psutil", ()))


async def test_auto_is_the_default_and_gets_the_trained_context_when_it_fits(monkeypatch):
    facts = _fake_facts(8192)
    fit = _admission(monkeypatch, facts)
    assert (await _plan(fit, _model())).ctx_size == 8192  # no ctx_size given: auto
    assert (await _plan(fit, _model(-1))).ctx_size == 8192
    assert (await _plan(fit, _model(1024))).ctx_size == 1024  # a number is that number


async def test_auto_on_the_cpu_without_a_budget_is_capped_by_half_the_available_memory(
    monkeypatch
):
    facts = _fake_facts(32768)
    # Half of the available memory holds the weights and 4096 cells and a few more.
    available = 2 * (facts.estimate_bytes(4096) + 100 * facts.kv_cache_bytes(1))
    fit = _admission(monkeypatch, facts, available=available)
    plan = await _plan(fit, _model())
    assert plan.ctx_size == 4096 and plan.estimate_bytes is None  # capped, no fit check
    # A number is never capped: the user asked for it.
    assert (await _plan(fit, _model(16384))).ctx_size == 16384
    # Almost nothing available: the floor, not less.
    fit = _admission(monkeypatch, facts, available=facts.estimate_bytes(0))
    assert (await _plan(fit, _model())).ctx_size == 2048


async def test_auto_under_a_ram_budget_is_capped_by_the_budget_not_the_machine(monkeypatch):
    facts = _fake_facts(32768)
    budget = (facts.estimate_bytes(8192) + 10 * facts.kv_cache_bytes(1)) / MIB
    fit = _admission(monkeypatch, facts, budget_mib=budget, available=1 << 40)
    plan = await _plan(fit, _model())
    assert plan.ctx_size == 8192 and plan.estimate_bytes == facts.estimate_bytes(8192)


async def test_auto_on_a_gpu_is_capped_by_its_free_memory_not_the_ram(monkeypatch):
    from lemonade_jupyter.core.memory import DeviceMemory, MemorySample

    facts = _fake_facts(32768)
    free = facts.estimate_bytes(12288) + 10 * facts.kv_cache_bytes(1)
    used = 1 << 30
    sample = MemorySample("nvml", (DeviceMemory("GPU", used + free, used, uuid="GPU-0"),))
    # Little RAM available and a small RAM budget: neither limits a model on the GPU.
    fit = _admission(monkeypatch, facts, offloads=True, available=facts.estimate_bytes(0),
                     budget_mib=facts.estimate_bytes(0) / MIB)
    plan = await _plan(fit, _model(), sample)
    assert plan.placement.uuids == ("GPU-0",) and plan.ctx_size == 12288
    # A GPU too small for even the floor: the floor, which the fit check then refuses.
    small = MemorySample("nvml", (DeviceMemory("GPU", used + facts.estimate_bytes(512), used,
                                               uuid="GPU-0"),))
    assert (await _plan(fit, _model(), small)).ctx_size == 2048


async def test_auto_of_a_model_trained_with_less_than_the_floor_keeps_its_context(monkeypatch):
    facts = _fake_facts(1024)
    fit = _admission(monkeypatch, facts, available=facts.estimate_bytes(0))
    assert (await _plan(fit, _model())).ctx_size == 1024


async def test_auto_without_a_readable_header_starts_with_the_default(monkeypatch):
    from lemonade_jupyter.core import fit_admission

    fit = _admission(monkeypatch, None)

    def unreadable(_path):
        raise ValueError("not a GGUF file")

    monkeypatch.setattr(fit_admission, "read_facts", unreadable)
    assert (await _plan(fit, _model())).ctx_size == 2048
