"""The router's rules with in-memory backends: LRU per pool, the all-pinned 409, pins on
load, explicit unloads of pinned models, shrinking the pools, single-flight loads, the retry
after a failed start, the crash-loop cooldown, the pinned reload and the watchdog's kill.

These rules only read what a backend reports (ready, exited, answering, its slots), so
:class:`tests.fakes.memory_launcher.MemoryLauncher` is enough: no process, no port, no sleep.
Spawning, signals, streaming, memory and real crashes stay end to end with llama-server
(``test_router_slots.py``, ``test_router_crash.py`` and the others here)."""

from __future__ import annotations

import asyncio

import pytest

from lemonade_jupyter.errors import (
    CoolingDownError, ModelLoadError, ModelNotFoundError, SlotsPinnedError,
)
from tests.fakes.memory_launcher import MemoryLauncher, memory_catalog, memory_router
from tests.helpers.polling import wait_until

from .conftest import events

NAMES = ["user.m1", "user.m2", "user.m3", "user.m4"]


def loaded(router) -> set[str]:
    return {m.name for m in router.live_models()}


@pytest.fixture
def launcher() -> MemoryLauncher:
    return MemoryLauncher()


@pytest.fixture
def open_router(tmp_path, launcher):
    def factory(**settings):
        return memory_router(memory_catalog(tmp_path, NAMES + ["user.bad"]), launcher,
                             tmp_path, **settings)
    return factory


async def use(router, name: str) -> None:
    """One request: a lease taken and given back (a use for LRU)."""
    async with router.lease(name):
        pass


async def test_router_lru_evicts_least_recently_used(open_router):
    async with open_router(max_loaded_models=2) as router:
        await router.load("user.m1")
        await router.load("user.m2")
        await router.load("user.m1")  # a repeat load counts as use: m2 is now the LRU
        await router.load("user.m3")
        assert loaded(router) == {"user.m1", "user.m3"}
        evicted = events(router, "evict")
        assert [(e.model, e.reason) for e in evicted] == [("user.m2", "lru")]
        # a request counts as use too: m1 used last, so m3 goes next
        await use(router, "user.m1")
        await router.load("user.m4")
        assert loaded(router) == {"user.m1", "user.m4"}
        assert len(events(router, "load")) == 4


async def test_router_all_pinned_pool_refuses_and_evicts_nothing(open_router, launcher):
    async with open_router(max_loaded_models=2) as router:
        a = await router.load("user.m1", pinned=True)
        b = await router.load("user.m2", pinned=True)
        backends = {a.backend, b.backend}
        with pytest.raises(SlotsPinnedError) as info:
            await asyncio.wait_for(router.load("user.m3"), 10)
        assert info.value.status_code == 409
        assert info.value.to_body()["error"]["requested_model"] == "user.m3"
        # the auto-load path of a request is refused the same way
        with pytest.raises(SlotsPinnedError):
            await use(router, "user.m3")
        assert loaded(router) == {"user.m1", "user.m2"}
        assert {router.get_live(n).backend for n in ("user.m1", "user.m2")} == backends
        assert not events(router, "evict") and not events(router, "unload")
        assert router.get_live("user.m3") is None and "user.m3" not in launcher.starts


async def test_router_unpin_lets_load_evict_it(open_router):
    async with open_router(max_loaded_models=2) as router:
        await router.load("user.m1", pinned=True)
        await router.load("user.m2", pinned=True)
        await router.load("user.m1")  # m2 is LRU, but pinned
        await router.set_pinned("user.m1", False)
        assert not router.get_live("user.m1").pinned
        await router.load("user.m3")
        assert loaded(router) == {"user.m2", "user.m3"}
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.m1", "lru")]
        assert router.get_live("user.m2").pinned


async def test_router_pin_omitted_keeps_pin_false_clears_it(open_router, launcher):
    async with open_router(max_loaded_models=2) as router:
        m = await router.load("user.m1", pinned=True)
        backend = m.backend
        await router.load("user.m1")  # omitted: keep
        assert router.get_live("user.m1").pinned
        await use(router, "user.m1")  # auto-load path does not touch the pin either
        assert router.get_live("user.m1").pinned
        await router.load("user.m1", pinned=False)
        assert not router.get_live("user.m1").pinned
        assert not router.remembered_pin("user.m1")
        await router.load("user.m1", pinned=True)  # pin an already-loaded model: no reload
        assert router.get_live("user.m1").pinned and router.get_live("user.m1").backend is backend
        assert [e.kind for e in events(router) if e.kind in ("pin", "unpin")] == [
            "unpin", "pin"]
        assert len(events(router, "load")) == 1 and launcher.starts == ["user.m1"]


async def test_router_explicit_unload_removes_pinned_models(open_router, launcher):
    async with open_router(max_loaded_models=-1) as router:
        await router.load("user.m1", pinned=True)
        await router.load("user.m2", pinned=True)
        await router.load("user.m3")
        await router.unload("user.m1")
        assert loaded(router) == {"user.m2", "user.m3"}
        assert not router.remembered_pin("user.m1")
        await router.unload()
        assert loaded(router) == set() and not router.remembered_pin("user.m2")
        assert {(e.model, e.reason) for e in events(router, "unload")} == {
            ("user.m1", "manual"), ("user.m2", "manual"), ("user.m3", "manual")}
        assert all(b.stop_requested for b in launcher.backends)


async def test_router_lowering_max_loaded_models_evicts_lru_unpinned(open_router):
    async with open_router(max_loaded_models=4) as router:
        await router.load("user.m1")
        await router.load("user.m2", pinned=True)
        await router.load("user.m3")
        await router.load("user.m4")
        await router.load("user.m1")  # order of use now: m2, m3, m4, m1
        await router.update_settings({"max_loaded_models": 2})
        assert loaded(router) == {"user.m2", "user.m1"}
        assert sorted((e.model, e.reason) for e in events(router, "evict")) == [
            ("user.m3", "lru"), ("user.m4", "lru")]
        assert router.get_live("user.m2").pinned
        await router.update_settings({"max_loaded_models": 1})  # pins kept over the limit
        assert loaded(router) == {"user.m2"}


async def test_router_concurrent_requests_start_one_backend(open_router, launcher):
    launcher.gate("user.m1")  # the load stays in progress until every request waits on it
    async with open_router(max_loaded_models=1) as router:
        requests = [asyncio.ensure_future(use(router, "user.m1")) for _ in range(8)]
        await wait_until(lambda: launcher.waiting("user.m1") == 1, 5, "the load started")
        await wait_until(lambda: router.get_live("user.m1") is not None
                         and router.get_live("user.m1").waiters == 8, 5, "8 waiters")
        launcher.release("user.m1")
        await asyncio.gather(*requests)
        assert launcher.starts == ["user.m1"] and len(events(router, "load")) == 1


async def test_router_busy_model_is_not_evicted_for_a_load(open_router):
    """A model with a request in flight is busy: a full pool waits for it instead of
    evicting it, and admits the newcomer once the request ends."""
    async with open_router(max_loaded_models=1) as router:
        lease = await router.acquire("user.m1")
        second = asyncio.ensure_future(router.load("user.m2"))
        await wait_until(lambda: any(m.name == "user.m2" for m in router._table.entries()),
                         5, "the second load waiting for a slot")
        assert not second.done() and loaded(router) == {"user.m1"}
        router.release(lease)
        await asyncio.wait_for(second, 10)
        assert loaded(router) == {"user.m2"}
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.m1", "lru")]


async def test_router_failed_start_retries_once_then_cools_down(open_router, launcher):
    """A failed start evicts every unpinned model that may go and tries once more; the next
    automatic start is refused during the cooldown, an explicit load is tried once."""
    launcher.fail_starts["user.bad"] = 3
    async with open_router(max_loaded_models=-1, crash_loop_threshold=2) as router:
        pinned = await router.load("user.m1", pinned=True)
        await router.load("user.m2")
        with pytest.raises(ModelLoadError):
            await router.load("user.bad")
        assert launcher.starts.count("user.bad") == 2
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.m2", "retry")]
        assert router.get_live("user.m1") is pinned and router.get_live("user.bad") is None
        [failed] = events(router, "load_failed", "user.bad")
        assert "told to" in failed.detail["error"]
        with pytest.raises(CoolingDownError) as cool:
            await use(router, "user.bad")
        assert cool.value.status_code == 503 and cool.value.retry_after_s >= 1
        assert launcher.starts.count("user.bad") == 2  # refused before any start
        with pytest.raises(ModelLoadError):
            await router.load("user.bad")  # explicit: tried once, now, without the retry
        assert launcher.starts.count("user.bad") == 3


async def test_router_missing_weights_cost_no_slot(open_router, launcher):
    launcher.missing.add("user.m2")
    async with open_router(max_loaded_models=1) as router:
        m1 = await router.load("user.m1")
        with pytest.raises(ModelNotFoundError):
            await router.load("user.m2")
        assert router.get_live("user.m1") is m1 and not events(router, "evict")


async def test_router_crash_of_pinned_model_reloads_it_and_an_unpinned_one_waits(
        open_router, launcher):
    async with open_router(max_loaded_models=-1) as router:
        pinned = await router.load("user.m1", pinned=True)
        unpinned = await router.load("user.m2")
        first = pinned.backend
        unpinned.backend.crash(9)
        first.crash(9)
        again = await wait_until(lambda: (m := router.get_live("user.m1")) is not None
                                 and m.backend is not None and m.backend is not first and m,
                                 5, "the pinned model's reload")
        assert again.pinned
        assert {(e.model, e.detail["exit_code"]) for e in events(router, "crash")} == {
            ("user.m1", 9), ("user.m2", 9)}
        assert [e.reason for e in events(router, "reload", "user.m1")] == ["crash"]
        assert router.get_live("user.m2") is None  # comes back on its next request
        await use(router, "user.m2")
        assert launcher.starts.count("user.m2") == 2


async def test_router_stop_we_asked_for_is_not_a_crash(open_router):
    async with open_router(max_loaded_models=-1) as router:
        await router.load("user.m1")
        await router.unload("user.m1")
        assert not events(router, "crash") and events(router, "unload", "user.m1")


async def test_router_two_reports_of_one_dead_backend_cause_one_reload(open_router, launcher):
    async with open_router(max_loaded_models=2) as router:
        await router.load("user.m2")  # an unpinned bystander must stay untouched
        await router.load("user.m1")
        async with router.lease("user.m1") as a, router.lease("user.m1") as b:
            a.backend.crash(9)
            await asyncio.gather(router.report_failure(a), router.report_failure(b))
        await asyncio.gather(use(router, "user.m1"), use(router, "user.m1"))
        assert launcher.starts.count("user.m1") == 2 and len(events(router, "crash")) == 1
        assert router.get_live("user.m2") is not None


async def test_router_watchdog_kills_a_hung_backend(open_router, launcher):
    """Probes that fail ``watchdog_probe_failures`` rounds in a row get the backend killed,
    which takes the crash path (a pinned model comes back). Rounds are driven by the test."""
    async with open_router(max_loaded_models=1, watchdog_interval_s=3600.0,
                           watchdog_probe_failures=2) as router:
        m = await router.load("user.m1", pinned=True)
        hung = m.backend
        hung.hang()
        await router.check_backends()
        assert router.get_live("user.m1") is m and not events(router, "crash")  # one miss
        await router.check_backends()
        assert hung.stop_requested and events(router, "crash", "user.m1")
        back = await wait_until(lambda: (x := router.get_live("user.m1")) is not None
                                and x.backend is not None and x.backend is not hung and x,
                                5, "the pinned model's reload")
        assert back.pinned


async def test_router_pinned_reload_waits_out_the_cooldown(open_router, launcher):
    """A pinned model whose crash reload fails cools down; once the cooldown ends the router
    tries again by itself, without a request."""
    async with open_router(max_loaded_models=1, crash_cooldown_s=0.2,
                           crash_loop_threshold=1) as router:
        m = await router.load("user.m1", pinned=True)
        launcher.fail_starts["user.m1"] = 2  # the reload and its retry fail: a cooldown
        crashed = m.backend
        crashed.crash(9)
        back = await wait_until(lambda: (x := router.get_live("user.m1")) is not None
                                and x.backend not in (None, crashed) and x, 10,
                                "the reload after the cooldown")
        assert back.pinned and launcher.starts.count("user.m1") == 4
        assert [e.reason for e in events(router, "load_failed", "user.m1")] == ["crash"]


async def test_router_a_change_of_one_model_wakes_only_its_own_waiters(open_router):
    """Each model has its own change signal: leases, loads and evictions of others do not
    wake a wait about this one, while its own drain still ends when its request does."""
    async with open_router(max_loaded_models=-1) as router:
        quiet = await router.load("user.m1")
        busy = await router.load("user.m2")
        before, busy_before = quiet.changes.version, busy.changes.version
        for _ in range(20):
            await use(router, "user.m2")
        await router.load("user.m3")
        await router.unload("user.m3")
        assert quiet.changes.version == before  # nothing about it changed: nobody woke
        assert busy.changes.version >= busy_before + 40  # each lease taken and given back
        lease = await router.acquire("user.m1")
        unload = asyncio.ensure_future(router.unload("user.m1"))  # drains: waits for it
        await wait_until(lambda: quiet.state.value == "evicting", 5, "the drain started")
        assert not unload.done()
        router.release(lease)
        await asyncio.wait_for(unload, 5)
        assert router.get_live("user.m1") is None
