"""What a router restart restores (pins, settings, which models come back first), on in-memory
backends.

These rules read only the router's state file and what a backend reports (started, ready): a
backend in memory is enough, and the tests take milliseconds. That the restored processes
really get the options they were loaded with (their command line), and that no backend
outlives the router's process, is checked on ``llama-server`` in ``test_router_lifetime.py``.
"""

from __future__ import annotations

import json

from lemonade_jupyter.core.catalog import Catalog
from tests.fakes.memory_launcher import MemoryLauncher, memory_catalog, memory_router

from .conftest import events, wait_event


def serving(router, name: str) -> bool:
    m = router.get_live(name)
    return m is not None and m.backend is not None and m.state.value in ("ready", "in_use")


async def test_router_restart_reloads_pinned_model_and_keeps_pin(tmp_path):
    launcher = MemoryLauncher()
    catalog = memory_catalog(tmp_path, ["user.m1", "user.m2"])
    async with memory_router(catalog, launcher, tmp_path, max_loaded_models=2) as router:
        await router.load("user.m1", pinned=True)
        await router.load("user.m2")
        first = launcher.backend("user.m1")
    assert first.exited.done()  # stopped with the router
    state = json.loads((tmp_path / "data" / "router_state.json").read_text())
    assert state["models"] == {"user.m1": {"pinned": True, "options": {}}}
    assert state["settings"]["max_loaded_models"] == 2

    # a fresh catalog and router on the same data dir, as after a server restart
    async with memory_router(Catalog(tmp_path / "data"), launcher, tmp_path,
                             max_loaded_models=1) as router:
        await wait_event(router, "reload", "user.m1")
        assert router.get_live("user.m1").pinned and serving(router, "user.m1")
        assert launcher.backend("user.m1") is not first  # a new backend
        assert router.settings.max_loaded_models == 2  # the runtime setting was persisted
        [reload] = events(router, "reload", "user.m1")
        assert reload.reason == "restore" and reload.detail["pinned"] is True
        # pinned models are restored first
        restored = [e.model for e in events(router) if e.kind in ("load", "reload")][0]
        assert restored == "user.m1"


async def test_router_restart_without_restore_keeps_remembered_pin(tmp_path):
    launcher = MemoryLauncher()
    catalog = memory_catalog(tmp_path, ["user.m1"])
    async with memory_router(catalog, launcher, tmp_path, max_loaded_models=2) as router:
        await router.load("user.m1", pinned=True)
        await router.update_settings({"restore_on_start": False})
    async with memory_router(Catalog(tmp_path / "data"), launcher, tmp_path) as router:
        assert router.live_models() == []
        assert launcher.starts == ["user.m1"]  # nothing started by the restart
        assert router.remembered_pin("user.m1")
        m = await router.load("user.m1")  # pin omitted: the remembered pin applies
        assert m.pinned
