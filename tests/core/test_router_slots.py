"""Slots, LRU and pins with real llama-server backends: LRU per pool, the all-pinned 409,
single-flight loads, pin on load, explicit unload of pinned models, shrinking the pools."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.errors import SlotsPinnedError

from .conftest import chat, events, post, ready_pid


def loaded(router) -> set[str]:
    return {m.name for m in router.live_models()}


async def test_router_lru_evicts_least_recently_used(catalog, make_router):
    async with make_router(catalog, max_loaded_models=2) as router:
        await router.load("user.m1")
        await router.load("user.m2")
        await router.load("user.m1")  # a repeat load counts as use: m2 is now the LRU
        await router.load("user.m3")
        assert loaded(router) == {"user.m1", "user.m3"}
        evicted = events(router, "evict")
        assert [(e.model, e.reason) for e in evicted] == [("user.m2", "lru")]
        # a request counts as use too: m1 used last, so m3 goes next
        await chat(router, "user.m1")
        await router.load("user.m4")
        assert loaded(router) == {"user.m1", "user.m4"}
        assert len(events(router, "load")) == 4


async def test_router_all_pinned_pool_refuses_and_evicts_nothing(catalog, make_router):
    async with make_router(catalog, max_loaded_models=2) as router:
        a = await router.load("user.m1", pinned=True)
        b = await router.load("user.m2", pinned=True)
        pids = {a.backend.pid, b.backend.pid}
        with pytest.raises(SlotsPinnedError) as info:
            await router.load("user.m3")
        assert info.value.status_code == 409
        assert info.value.to_body()["error"]["requested_model"] == "user.m3"
        # the auto-load path of a request is refused the same way
        with pytest.raises(SlotsPinnedError):
            await chat(router, "user.m3")
        assert loaded(router) == {"user.m1", "user.m2"}
        assert {ready_pid(router, n) for n in ("user.m1", "user.m2")} == pids
        assert not events(router, "evict") and not events(router, "unload")
        assert router.get_live("user.m3") is None


async def test_router_unpin_lets_load_evict_it(catalog, make_router):
    async with make_router(catalog, max_loaded_models=2) as router:
        await router.load("user.m1", pinned=True)
        await router.load("user.m2", pinned=True)
        await router.load("user.m1")  # m2 is LRU, but pinned
        await router.set_pinned("user.m1", False)
        assert not router.get_live("user.m1").pinned
        await router.load("user.m3")
        assert loaded(router) == {"user.m2", "user.m3"}
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.m1", "lru")]
        assert router.get_live("user.m2").pinned


async def test_router_pin_omitted_keeps_pin_false_clears_it(catalog, make_router):
    async with make_router(catalog, max_loaded_models=2) as router:
        m = await router.load("user.m1", pinned=True)
        pid = m.backend.pid
        await router.load("user.m1")  # omitted: keep
        assert router.get_live("user.m1").pinned
        await chat(router, "user.m1")  # auto-load path does not touch the pin either
        assert router.get_live("user.m1").pinned
        await router.load("user.m1", pinned=False)
        assert not router.get_live("user.m1").pinned
        assert not router.remembered_pin("user.m1")
        await router.load("user.m1", pinned=True)  # pin an already-loaded model: no reload
        assert router.get_live("user.m1").pinned and ready_pid(router, "user.m1") == pid
        assert [e.kind for e in events(router) if e.kind in ("pin", "unpin")] == [
            "unpin", "pin"]
        assert len(events(router, "load")) == 1


async def test_router_explicit_unload_removes_pinned_models(catalog, make_router):
    async with make_router(catalog, max_loaded_models=-1) as router:
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


async def test_router_lowering_max_loaded_models_evicts_lru_unpinned(catalog, make_router):
    async with make_router(catalog, max_loaded_models=4) as router:
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


async def test_router_concurrent_requests_start_one_backend(catalog, make_router):
    async with make_router(catalog, max_loaded_models=1) as router:
        results = await asyncio.gather(*(chat(router, "user.m1") for _ in range(8)))
        pids = {pid for pid, _body in results}
        assert len(pids) == 1
        assert len(events(router, "load")) == 1
        assert ready_pid(router, "user.m1") in pids


async def test_router_option_change_reloads_and_keeps_pin(catalog, make_router):
    async with make_router(catalog, max_loaded_models=1) as router:
        m = await router.load("user.m1", pinned=True)
        old_pid = m.backend.pid
        m = await router.load("user.m1", options=LoadOptions(ctx_size=1024),
                              given=frozenset({"ctx_size"}))
        assert m.backend.pid != old_pid and m.options.ctx_size == 1024
        assert m.pinned and router.get_live("user.m1") is m
        argv = psutil.Process(m.backend.pid).cmdline()  # what the process really got
        assert argv[argv.index("--ctx-size") + 1] == "1024"
        [reload] = events(router, "reload", "user.m1")
        assert (reload.reason, reload.detail["pinned"]) == ("options", True)
        assert not events(router, "restore")  # nothing was downsized
        # a non-process option changes in place
        same = await router.load("user.m1", options=LoadOptions(auto_evict=True),
                                 given=frozenset({"auto_evict"}))
        assert same.backend.pid == m.backend.pid and same.options.ctx_size == 1024


async def test_backend_requires_its_api_key(catalog, make_router):
    async with make_router(catalog) as router:
        async with router.lease("user.m1") as lease:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            refused = await post(router, lease, "/v1/chat/completions", body, headers={})
            assert refused.status_code == 401
            wrong = await post(router, lease, "/v1/chat/completions", body,
                               headers={"Authorization": "Bearer not-the-key"})
            assert wrong.status_code == 401
            accepted = await post(router, lease, "/v1/chat/completions", body)
            assert accepted.status_code == 200
            assert accepted.json()["choices"][0]["message"]["role"] == "assistant"
            health = await router.http.get(f"{lease.url}/health")
            assert health.status_code == 200  # readiness probe stays public
