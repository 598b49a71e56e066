"""Load / unload / chat / idle-only evaluations from several threads at once, for seconds.

The engine is as aggressive as it gets (downsize at once, unload after 0.3 s idle), so models
are downsized, restored and evicted under the feet of the loaders. Nothing may answer 5xx (or
anything but 200, and 404 for unloading a model the engine already took), and at the end
``/health`` must match the real processes: every listed pid alive and a llama-server, and no
other llama-server child.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import psutil

from tests.helpers.polling import wait_for
from tests.helpers.processes import backend_pids

from .conftest import DEADLINE_S, join, run_in_thread

CHURN_S = 5.0


def test_concurrent_load_unload_and_evaluations_leave_a_consistent_router(lemon):
    lemon.set(auto_evict=True, downsize_idle_timeout=0, evict_idle_timeout=0.3)
    stop = threading.Event()
    statuses: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def record(what: str, code: int) -> None:
        with lock:
            statuses[(what, code)] += 1

    def loader(name: str, seed: int) -> None:
        rng = random.Random(seed)
        i = 0
        while not stop.is_set():
            i += 1
            record("load", lemon.post("api/v1/load", {"model_name": name}).status_code)
            time.sleep(rng.uniform(0.05, 0.5))  # a user's pause: the engine may act meanwhile
            if i % 2:
                resp = lemon.post("api/v1/chat/completions", {
                    "model": name, "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]})
                record("chat", resp.status_code)
            record("unload", lemon.unload(name).status_code)

    loaders_done = threading.Event()  # the engine keeps going until the last loader is done

    def evaluator() -> None:
        while not loaders_done.is_set():
            record("simulate", lemon.post("internal/simulate-vram-pressure",
                                          {"pct": -1}).status_code)
            time.sleep(0.02)  # leave the 2 CPUs to the backends now and then

    def poller() -> None:
        while not loaders_done.is_set():
            record("health", lemon.get("api/v1/health").status_code)
            time.sleep(0.05)

    loaders = [run_in_thread(lambda n=n, i=i: loader(n, i))
               for i, n in enumerate(("user.m1", "user.m2", "user.m3"))]
    others = [run_in_thread(evaluator), run_in_thread(poller)]
    time.sleep(CHURN_S)  # the churn itself: this is its duration, nothing is asserted after it
    stop.set()
    try:
        for thread, out in loaders:
            join(thread, out, DEADLINE_S * 2)
    finally:
        loaders_done.set()
    for thread, out in others:
        join(thread, out)

    allowed = {("load", 200), ("chat", 200), ("unload", 200), ("unload", 404),
               ("simulate", 200), ("health", 200)}
    assert set(statuses) <= allowed, statuses
    assert statuses[("load", 200)] >= 3 and statuses[("simulate", 200)] >= 3, statuses
    kinds = Counter(e.kind for e in lemon.events())
    assert kinds["load"] >= 3 and kinds["load_failed"] == 0 and kinds["crash"] == 0, kinds
    assert kinds["downsize"] + kinds["evict"] >= 1, kinds  # the engine did act meanwhile
    print(f"\nchurn: {dict(statuses)} events: {dict(kinds)}")

    # Leave something loaded (one ready, one downsized) and compare with the processes.
    lemon.set(auto_evict=False)
    lemon.load("user.m1")
    lemon.load("user.m2", pinned=False, downsize_idle_timeout=0, auto_evict=True)
    assert [a["action"] for a in lemon.simulate(-1)] == ["downsize"]

    def consistent():
        health = lemon.health()
        listed = {m["pid"] for m in health["all_models_loaded"] if m["pid"] is not None}
        return health if listed == backend_pids() else None

    health = wait_for(consistent, what="/health to match the llama-server processes")
    assert health["status"] == "ok"
    states = {m["model_name"]: m["status"] for m in health["all_models_loaded"]}
    assert states == {"user.m1": "ready", "user.m2": "downsized"}
    for m in health["all_models_loaded"]:
        if m["pid"] is not None:
            proc = psutil.Process(m["pid"])
            assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            assert "llama-server" in " ".join(proc.cmdline())
    assert health["loaded_models"]["llm"] == 2

    assert lemon.unload().status_code == 200
    assert lemon.health()["all_models_loaded"] == []
    wait_for(lambda: backend_pids() == set(), what="every backend to end")
