"""Tier 1 (downsize), hard-idle eviction and idleness, with real backends.

A downsize stops the model's backend but keeps its slot, pin, options and statistics; its next
request restores it. The figures printed here (``-s``) are the measured ones.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psutil

from lemonade_jupyter.core import process
from tests.helpers.polling import wait_for
from tests.helpers.processes import alive, backend_pids

from .conftest import join, run_in_thread

MB = 1024 * 1024


def test_downsize_frees_the_memory_and_the_next_chat_restores_it(lemon):
    lemon.load("user.m1", downsize_idle_timeout=0)
    lemon.set(auto_evict=True)
    before = lemon.model("user.m1")
    pid = before["pid"]
    rss_before = psutil.Process(pid).memory_info().rss
    assert before["status"] == "ready"
    assert before["memory_bytes"] > 50 * MB, before  # measured: the process's RSS
    assert rss_before > 50 * MB

    actions = lemon.simulate(-1)

    assert actions == [{"model": "user.m1", "action": "downsize", "reason": "idle"}]
    after = lemon.model("user.m1")
    assert after["status"] == "downsized"
    assert after["pid"] is None and after["backend_url"] is None
    assert not alive(pid) and pid not in backend_pids()
    assert after["memory_bytes"] <= before["memory_bytes"] / 2
    assert after["memory_freed_bytes"] >= before["memory_bytes"] / 2
    # The slot, options and statistics stay.
    health = lemon.health()
    assert health["loaded_models"]["llm"] == 1
    assert after["recipe_options"] == before["recipe_options"]
    assert after["load_duration_ms"] == before["load_duration_ms"]
    assert after["last_use"] == before["last_use"]
    [event] = lemon.events("downsize", "user.m1")
    assert event.reason == "idle"
    assert event.memory_before >= before["memory_bytes"] / 2
    assert event.memory_after is not None and event.memory_after <= event.memory_before / 2
    # A downsized model is not downsized again.
    assert lemon.simulate(-1) == []

    started = time.monotonic()
    reply = lemon.chat("user.m1")
    restore_s = time.monotonic() - started
    assert reply["choices"][0]["message"]["content"] is not None
    restored = lemon.model("user.m1")
    assert restored["status"] in ("ready", "in_use")
    assert restored["pid"] not in (None, pid) and alive(restored["pid"])
    assert restored["memory_bytes"] > 50 * MB
    [restore] = lemon.events("restore", "user.m1")
    assert restore.reason == "request" and restore.id > event.id
    assert "lemonade_downsizes_total 1.0" in lemon.metrics()
    print(f"\ndownsize: /health memory_bytes {before['memory_bytes'] / MB:.1f} MB -> "
          f"{after['memory_bytes'] / MB:.1f} MB; event {event.memory_before / MB:.1f} MB -> "
          f"{event.memory_after / MB:.1f} MB; psutil RSS before {rss_before / MB:.1f} MB; "
          f"restore: chat answered in {restore_s * 1000:.0f} ms "
          f"(backend ready in {restore.detail['load_duration_ms']:.0f} ms)")


def test_a_pinned_model_stays_ready_and_pinning_a_downsized_model_restores_it(lemon):
    lemon.load("user.m1", pinned=True, downsize_idle_timeout=0, evict_idle_timeout=0)
    lemon.set(auto_evict=True)
    pid = lemon.model("user.m1")["pid"]

    assert lemon.simulate(-1) == []
    assert lemon.simulate(1.0) == []
    entry = lemon.model("user.m1")
    assert entry["status"] == "ready" and entry["pid"] == pid

    # Unpinned, it is downsized (evict_idle_timeout would unload it: give it time first).
    lemon.load("user.m1", evict_idle_timeout=3600)
    lemon.pin("user.m1", False)
    assert [a["action"] for a in lemon.simulate(-1)] == ["downsize"]
    assert lemon.model("user.m1")["status"] == "downsized"

    # Pinning it again brings it back at once: a pinned model is never left asleep.
    assert lemon.pin("user.m1", True)["pinned"] is True
    restored = wait_for(
        lambda: (m := lemon.model("user.m1"))["status"] == "ready" and m,
        what="the pinned model to be restored",
    )
    assert restored["pinned"] is True
    assert restored["pid"] not in (None, pid) and alive(restored["pid"])
    kinds = [e.kind for e in lemon.events(model="user.m1")]
    assert kinds[-3:] == ["downsize", "pin", "restore"], kinds
    assert lemon.simulate(-1) == []


def test_a_request_during_a_downsize_waits_and_is_served(lemon, monkeypatch):
    """The backend's stop is held at a gate (fault injection: a slow engine shutdown), so the
    model stays ``downsizing`` for as long as the test wants, whatever the engine's own shutdown
    time (~25 ms native, less on the prebuilt engine). A chat sent in that window must wait,
    not fail, and be served by a restored backend once the downsize has ended."""
    gate = threading.Event()
    real_terminate = process.terminate

    async def held_terminate(proc, grace_s):
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return await real_terminate(proc, grace_s)

    lemon.load("user.m1", downsize_idle_timeout=0)
    lemon.set(auto_evict=True)
    pid = lemon.model("user.m1")["pid"]
    monkeypatch.setattr(process, "terminate", held_terminate)
    try:
        thread, out = run_in_thread(lambda: lemon.simulate(-1))
        wait_for(lambda: lemon.model("user.m1")["status"] == "downsizing",
                 what="the model to be downsizing", interval=0.02)
        sent = time.time()
        chat_thread, chat_out = run_in_thread(lambda: lemon.chat("user.m1"))
        # The request is in the router, waiting on the model's transition (not refused).
        wait_for(lambda: lemon.router.get_live("user.m1").waiters >= 1,
                 what="the chat to wait on the downsize", interval=0.02)
        assert chat_thread.is_alive() and not chat_out, "the chat did not wait for the downsize"
        assert lemon.model("user.m1")["status"] == "downsizing"
    finally:
        gate.set()
    reply = join(chat_thread, chat_out)
    assert reply["choices"][0]["message"]["content"] is not None
    assert join(thread, out) == [{"model": "user.m1", "action": "downsize", "reason": "idle"}]
    [downsize] = lemon.events("downsize", "user.m1")
    [restore] = lemon.events("restore", "user.m1")
    assert sent < downsize.time < restore.time  # the request came before the downsize ended
    entry = lemon.model("user.m1")
    assert entry["status"] in ("ready", "in_use")
    assert entry["pid"] != pid and alive(entry["pid"])
    assert not alive(pid)


def test_hard_idle_eviction_after_evict_idle_timeout(lemon):
    lemon.load("user.m2")  # default timeouts (60 s / 300 s): stays
    lemon.set(auto_evict=True)
    lemon.load("user.m1", evict_idle_timeout=2.0)
    loaded = time.monotonic()
    pid = lemon.model("user.m1")["pid"]

    early = lemon.simulate(-1)
    if time.monotonic() - loaded < 2.0:  # the pass surely ran before m1 was idle for 2 s
        assert early == []
        assert set(lemon.models()) == {"user.m1", "user.m2"}
        wait_for(lambda: lemon.model("user.m1")["idle_s"] > 2.0, what="m1 idle for 2 s")
        actions = lemon.simulate(-1)
    else:  # this machine stalled longer than the timeout: the first pass already took it
        actions = early

    assert actions == [{"model": "user.m1", "action": "evict", "reason": "idle"}]
    assert set(lemon.models()) == {"user.m2"}
    assert not alive(pid)
    [event] = lemon.events("evict", "user.m1")
    assert event.reason == "idle" and event.memory_before > 0
    assert 'lemonade_evictions_total{reason="idle"} 1.0' in lemon.metrics()


def test_the_engine_loop_evicts_idle_models_by_itself(make_lemonade):
    lemon = make_lemonade(memory_sample_interval_s=0.1, eviction_interval_s=0.1)
    lemon.load("user.m1", downsize_idle_timeout=0.3, evict_idle_timeout=1.5)
    lemon.set(auto_evict=True)
    wait_for(lambda: lemon.events("downsize", "user.m1"), what="the loop to downsize m1")
    wait_for(lambda: lemon.model("user.m1") is None, what="the loop to evict m1")
    [event] = lemon.events("evict", "user.m1")
    assert event.reason == "idle"
    assert backend_pids() == set()


def test_health_polls_never_count_as_use(lemon):
    lemon.load("user.m1", downsize_idle_timeout=0.5)
    lemon.set(auto_evict=True)
    first = lemon.model("user.m1")
    idles = [first["idle_s"]]
    for _ in range(5):
        time.sleep(0.1)  # let time pass between polls
        entry = lemon.model("user.m1")
        lemon.get("api/v1/models")
        lemon.get("internal/config")
        lemon.get("metrics")
        assert entry["last_use"] == first["last_use"]
        idles.append(entry["idle_s"])
    assert idles == sorted(idles) and idles[-1] >= idles[0] + 0.5, idles
    # So the polled model counts as idle for the engine too.
    assert [a["action"] for a in lemon.simulate(-1)] == ["downsize"]
