"""Slots with real llama-server backends: a reload with new process options reaches the
process's command line, and a backend answers only with its own key.

The rules about slots and pins (LRU per pool, the all-pinned 409, single-flight loads, pins on
load, explicit unloads, shrinking the pools) are in ``test_router_rules.py``, on in-memory
backends: they read only what a backend reports."""

from __future__ import annotations

import psutil

from lemonade_jupyter.core.options import LoadOptions

from .conftest import events, post


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
