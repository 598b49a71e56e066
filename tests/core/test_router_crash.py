"""Crashes, hung and broken backends with real llama-server: reloads, one replay per request,
the crash-loop cooldown and the watchdog."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import pytest

from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.errors import (
    CoolingDownError,
    EngineMissingError,
    ModelLoadError,
    ModelNotFoundError,
)

from tests.helpers.polling import wait_until

from .conftest import chat, events, ready_pid, wait_event


def loads_after(router, event, model):
    """New backends started for ``model`` after ``event``: by a request (``load``) or by
    the router itself (``reload``), whichever got there first."""
    return [e for e in events(router, model=model)
            if e.id > event.id and e.kind in ("load", "reload")]


@pytest.fixture
def corrupt_gguf(tmp_path):
    """Passes the catalog's magic check, but llama-server cannot load it."""
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + os.urandom(4096))
    return str(path)


async def test_router_sigkill_of_pinned_backend_next_request_gets_new_process(
    catalog, make_router
):
    async with make_router(catalog, max_loaded_models=2) as router:
        m = await router.load("user.m1", pinned=True)
        old_pid = m.backend.pid
        os.kill(old_pid, signal.SIGKILL)
        pid, body = await chat(router, "user.m1")
        assert pid != old_pid
        assert body["choices"][0]["message"]["role"] == "assistant"
        live = router.get_live("user.m1")
        assert live.pinned and router.remembered_pin("user.m1")
        crash = events(router, "crash", "user.m1")
        assert len(crash) == 1 and crash[0].detail["pid"] == old_pid
        assert len(loads_after(router, crash[0], "user.m1")) == 1


async def test_router_two_requests_on_dead_backend_cause_one_reload(catalog, make_router):
    async with make_router(catalog, max_loaded_models=2) as router:
        await router.load("user.m2")  # an unpinned bystander must stay untouched
        await router.load("user.m1")
        async with router.lease("user.m1") as a, router.lease("user.m1") as b:
            assert a.backend is b.backend
            old_pid = a.backend.pid
            os.kill(old_pid, signal.SIGKILL)
            # both requests fail in transport and report the same dead backend
            await asyncio.gather(router.report_failure(a), router.report_failure(b))
        results = await asyncio.gather(chat(router, "user.m1"), chat(router, "user.m1"))
        new_pids = {pid for pid, _ in results}
        assert len(new_pids) == 1 and old_pid not in new_pids
        [crash] = events(router, "crash", "user.m1")
        assert len(loads_after(router, crash, "user.m1")) == 1
        assert ready_pid(router, "user.m2") is not None


async def test_router_requests_racing_a_crash_are_replayed_once(catalog, make_router):
    async with make_router(catalog, max_loaded_models=1) as router:
        old_pid, _ = await chat(router, "user.m1")
        os.kill(old_pid, signal.SIGKILL)
        results = await asyncio.gather(*(chat(router, "user.m1") for _ in range(4)))
        assert len({pid for pid, _ in results}) == 1
        [crash] = events(router, "crash", "user.m1")
        assert len(loads_after(router, crash, "user.m1")) == 1


async def test_router_crash_reload_keeps_pin_and_is_automatic(catalog, make_router):
    async with make_router(catalog, max_loaded_models=1) as router:
        options = LoadOptions(ctx_size=1024, auto_evict=True, evict_weight_factor=3.0)
        m = await router.load("user.m1", pinned=True, options=options,
                              given=frozenset({"ctx_size", "auto_evict", "evict_weight_factor"}))
        old_pid = m.backend.pid
        os.kill(old_pid, signal.SIGKILL)
        # a pinned model comes back by itself, without any request, with all its options
        new_pid = await wait_until(lambda: (p := ready_pid(router, "user.m1")) != old_pid and p,
                                   what="the pinned model's reload")
        assert new_pid != old_pid and router.get_live("user.m1").pinned
        assert router.get_live("user.m1").options == options
        [reload] = events(router, "reload", "user.m1")
        assert reload.reason == "crash" and reload.detail["pinned"] is True


async def test_router_crashed_unpinned_model_comes_back_with_its_options(catalog, make_router):
    """An unpinned model is not reloaded by itself after a crash; the request that reloads it
    gets the options it was loaded with, not the defaults."""
    async with make_router(catalog, max_loaded_models=2) as router:
        options = LoadOptions(ctx_size=1024, evict_weight_factor=3.0)
        m = await router.load("user.m1", options=options,
                              given=frozenset({"ctx_size", "evict_weight_factor"}))
        old_pid = m.backend.pid
        os.kill(old_pid, signal.SIGKILL)
        await wait_event(router, "crash", "user.m1")
        assert router.get_live("user.m1") is None
        new_pid, _ = await chat(router, "user.m1")
        assert new_pid != old_pid
        assert router.get_live("user.m1").options == options
        with open(f"/proc/{new_pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[argv.index(b"--ctx-size") + 1] == b"1024"


async def test_router_corrupt_gguf_retries_once_then_cools_down(
    catalog, make_router, corrupt_gguf, tmp_path
):
    catalog.add_user_model("user.bad", corrupt_gguf)
    async with make_router(catalog, max_loaded_models=-1) as router:
        pinned = await router.load("user.m1", pinned=True)
        await router.load("user.m2")
        await router.load("user.m3", pinned=False)
        with pytest.raises(ModelLoadError) as info:
            await router.load("user.bad")
        message = info.value.message
        assert "user.bad" in message and "exited with code" in message
        assert "failed to load model" in message  # llama-server's own words
        # two start attempts (one log file per backend), unpinned others evicted for the retry
        logs = sorted(p.name for p in (tmp_path / "logs").glob("user.bad.*.log"))
        assert len(logs) == 2, logs
        assert sorted((e.model, e.reason) for e in events(router, "evict")) == [
            ("user.m2", "retry"), ("user.m3", "retry")]
        assert router.get_live("user.m1") is pinned and ready_pid(router, "user.m1")
        assert router.get_live("user.bad") is None
        [failed] = events(router, "load_failed", "user.bad")
        assert failed.detail["error"]
        # next automatic try: refused at once with Retry-After, no third process
        started = time.monotonic()
        with pytest.raises(CoolingDownError) as cool:
            await chat(router, "user.bad")
        assert time.monotonic() - started < 1.0
        assert cool.value.status_code == 503 and cool.value.retry_after_s >= 1
        assert cool.value.headers()["Retry-After"] == str(cool.value.retry_after_s)
        assert len(list((tmp_path / "logs").glob("user.bad.*.log"))) == 2
        # an explicit load is never refused: tried once (no retry), the engine's reason back
        with pytest.raises(ModelLoadError, match="failed to load model"):
            await router.load("user.bad")
        assert len(list((tmp_path / "logs").glob("user.bad.*.log"))) == 3
        assert router.get_live("user.m1") is pinned and ready_pid(router, "user.m1")


async def test_router_missing_weights_is_not_found_at_once(
    catalog, make_router, default_model_file, tmp_path
):
    gone = tmp_path / "gone.gguf"
    gone.write_bytes(b"GGUF")
    catalog.add_user_model("user.gone", str(gone))
    gone.unlink()
    async with make_router(catalog, max_loaded_models=1) as router:
        m1 = await router.load("user.m1")
        with pytest.raises(ModelNotFoundError) as info:
            await router.load("user.gone")
        assert info.value.status_code == 404 and str(gone) in info.value.message
        # no retry, no cooldown, and the full pool gave up nothing for it
        assert not list((tmp_path / "logs").glob("user.gone.*"))
        assert router.get_live("user.m1") is m1 and ready_pid(router, "user.m1")
        assert not events(router, "evict")
        with pytest.raises(ModelNotFoundError):
            await router.load("user.gone")


async def test_router_missing_engine_costs_no_other_model_its_slot(
    catalog, make_router, tmp_path
):
    """llama-server removed (or never installed) while a model runs: the next load fails with
    the install hint before admission, so the full pool's LRU model keeps its slot."""
    async with make_router(catalog, max_loaded_models=1) as router:
        m1 = await router.load("user.m1")
        router.launcher.llama_server_path = str(tmp_path / "removed" / "llama-server")
        with pytest.raises(EngineMissingError) as info:
            await router.load("user.m2")
        assert info.value.status_code == 503 and "install-llama-server" in info.value.message
        assert router.get_live("user.m1") is m1 and ready_pid(router, "user.m1")
        assert not events(router, "evict")
        assert router.get_live("user.m2") is None


async def test_router_pinned_model_is_reloaded_when_its_crash_cooldown_ends(
    catalog, make_router, default_model_file, tmp_path, corrupt_gguf
):
    """A pinned model whose backend crashes and then cannot start goes into the crash-loop
    cooldown; once the cooldown is over the router tries again by itself (a pin means "keep
    this loaded"), without waiting for a request."""
    weights = tmp_path / "flaky.gguf"
    good = tmp_path / "good.gguf.bak"
    shutil.copyfile(default_model_file, good)
    os.link(good, weights)
    catalog.add_user_model("user.flaky", str(weights))
    async with make_router(catalog, max_loaded_models=2, crash_cooldown_s=1.0) as router:
        m = await router.load("user.flaky", pinned=True)
        old_pid = m.backend.pid
        weights.unlink()
        os.link(corrupt_gguf, weights)  # the next start fails: crash, failed reload, cooldown
        os.kill(old_pid, signal.SIGKILL)
        await wait_until(lambda: router._guard.cooling_down("user.flaky")
                         and router.get_live("user.flaky") is None, 30,
                         "the failed reload and the crash-loop cooldown")
        weights.unlink()
        os.link(good, weights)  # fixed while it cools down; nobody sends a request
        new_pid = await wait_until(lambda: ready_pid(router, "user.flaky"), 30,
                                   "the reload after the cooldown")
        assert new_pid != old_pid
        assert router.get_live("user.flaky").pinned
        assert [e.reason for e in events(router, "load_failed", "user.flaky")] == ["crash"]


async def test_router_watchdog_kills_and_reloads_hung_backend(catalog, make_router):
    """A SIGSTOPped backend keeps its port but never answers: the watchdog's probes fail,
    it is killed and, being pinned, reloaded."""
    async with make_router(
        catalog, max_loaded_models=1, watchdog_interval_s=0.2, watchdog_probe_timeout_s=0.3,
        watchdog_probe_failures=2, stop_grace_s=0.5,
    ) as router:
        m = await router.load("user.m1", pinned=True)
        old_pid = m.backend.pid
        os.kill(old_pid, signal.SIGSTOP)
        try:
            [crash] = await wait_event(router, "crash", "user.m1", timeout=20)
            new_pid = await wait_until(
                lambda: (p := ready_pid(router, "user.m1")) != old_pid and p,
                what="the reload after the hang",
            )
        finally:
            try:
                os.kill(old_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert router.get_live("user.m1").pinned
        assert crash.detail["pid"] == old_pid
        pid, _ = await chat(router, "user.m1")
        assert pid == new_pid
