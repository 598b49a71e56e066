"""Concurrency invariants under many threads doing random operations.

8 client threads load, unload, pin, unpin, change ``max_loaded_models`` and chat (streaming and
not) at random against an embedded server (the extension's own handlers and router on their own
thread), with fake backends for a longer run and real llama-server for a shorter one. A run
lasts until it has done a given amount of work (operations and admissions), however long that
takes on a busy machine; its time cap only catches a router that stopped making progress.
Watched all along:

* a pool never holds more than its limit: checked inside the router at every admission, and at
  quiet checkpoints (pinned models kept when the limit is lowered are allowed: a lower limit
  never unloads a pinned model);
* a pinned model is never evicted automatically: no ``evict`` event while its pin is set, seen
  both inside the router and on the public event stream (which must stay open for the whole
  run and deliver every event the router emitted);
* no model ever has two backend processes (process table sampled every 20 ms);
* every process is reaped, and ``/health`` names exactly the processes that run (at quiet
  checkpoints; during the run a serving pid it lists is alive).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lemonade_jupyter.core.decisions import pool
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.server.embedded import EmbeddedServer

from tests.helpers.artifacts import write_artifact
from tests.helpers.fakes import clear_fake_knobs
from tests.helpers.http import API, api_client, chat_body, read_stream, sse_events
from tests.helpers.polling import wait_for
from tests.helpers.processes import alive, backend_children, zombies_below

LLMS = ["user.c1", "user.c2", "user.c3", "user.c4"]
EMBEDDERS = ["user.e1", "user.e2"]
#: Wall-clock cap of one run. A run normally takes a fraction of it (on a busy 2-core machine
#: the fake one 40-80 s, the real one 20-40 s); reaching it means the router stopped making
#: progress.
TIME_CAP_S = 300.0


def _model_of(p: psutil.Process) -> str | None:
    try:
        argv = p.cmdline()
    except psutil.Error:
        return None
    for flag in ("--model", "-m"):
        if flag in argv:
            return Path(argv[argv.index(flag) + 1]).stem
    return None


class Invariants:
    """Violations found by the in-router hooks, the process sampler and the event stream."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.lock = threading.Lock()
        self.admissions = 0
        self.operations = 0
        self.samples = 0
        self.events = 0
        self.max_seen: Counter[str] = Counter()
        # What the router emitted (its own listener) and what the event stream delivered.
        self.router_kinds: Counter[str] = Counter()
        self.router_last_id = 0
        self.stream_kinds: Counter[str] = Counter()
        self.stream_last_id = 0
        self.stream_error: str | None = None

    def fail(self, message: str) -> None:
        with self.lock:
            if len(self.violations) < 50:
                self.violations.append(message)

    def operation_done(self) -> None:
        with self.lock:
            self.operations += 1


def install_router_hooks(server: EmbeddedServer, inv: Invariants) -> None:
    """Wrap the router's change signal and listen to events, on the router's own loop.

    Every admission notifies the change signal, so checking the pools at each notification
    sees every admission as it happens."""
    router = server.router
    assert router is not None and server._loop is not None
    done = threading.Event()

    def install() -> None:
        admitted: set[int] = {id(m) for m in router.live_models()}
        changes = router._changes
        original = changes.notify

        def notify() -> None:
            limit = router.settings.max_loaded_models
            entries = router._table.entries()
            for m in entries:
                if m.admitted and id(m) not in admitted:
                    admitted.add(id(m))
                    inv.admissions += 1
                    size = len(pool([e.snapshot() for e in entries], m.type))
                    inv.max_seen[m.type] = max(inv.max_seen[m.type], size)
                    if limit != -1 and size > limit:
                        inv.fail(f"admitted {m.name}: pool {m.type} holds {size} > {limit}")
            live = {id(m) for m in entries if m.admitted}
            admitted.intersection_update(live)
            original()

        def on_event(event: Any) -> None:
            if event.kind == "evict" and router.remembered_pin(event.model):
                inv.fail(f"pinned {event.model} evicted ({event.reason}) [router]")

        changes.notify = notify  # type: ignore[method-assign]
        router.events.add_listener(on_event)
        done.set()

    server._loop.call_soon_threadsafe(install)
    assert done.wait(10)


def count_router_events(server: EmbeddedServer, inv: Invariants) -> None:
    """Count, on the router's loop, every event the router emits from now on."""
    assert server._loop is not None and server.router is not None
    events = server.router.events
    done = threading.Event()

    def on_event(event: Any) -> None:
        with inv.lock:
            inv.router_kinds[event.kind] += 1
            inv.router_last_id = event.id

    def install() -> None:
        events.add_listener(on_event)
        done.set()

    server._loop.call_soon_threadsafe(install)
    assert done.wait(10)


def watch_event_stream(server: EmbeddedServer, inv: Invariants, stop: threading.Event,
                       ready: threading.Event) -> None:
    """Track pins from the public event stream; an ``evict`` of a pinned model is a violation.

    Counts what it saw by kind. The stream must stay open until ``stop``: a transport error, an
    error status or the stream ending before then is recorded as ``inv.stream_error``."""
    pinned: dict[str, bool] = defaultdict(bool)
    seen: dict[str, deque[tuple[Any, ...]]] = defaultdict(lambda: deque(maxlen=8))
    try:
        with api_client(server.url, server.token, timeout=httpx.Timeout(None, connect=10)) as c:
            with c.stream("GET", f"{API}/events", params={"last_event_id": 0}) as resp:
                if resp.status_code != 200:
                    inv.stream_error = f"GET events answered {resp.status_code}"
                    return
                ready.set()
                for sse in sse_events(resp):
                    inv.events += 1
                    e = sse["data"]
                    kind, model, detail = e["kind"], e.get("model"), e.get("detail", {})
                    with inv.lock:
                        inv.stream_kinds[kind] += 1
                        inv.stream_last_id = sse["id"]
                    seen[model].append((sse["id"], kind, e.get("reason"), detail))
                    if kind in ("load", "reload", "restore") and "pinned" in detail:
                        pinned[model] = detail["pinned"]
                    elif kind in ("pin", "unpin"):
                        pinned[model] = kind == "pin"
                    elif kind == "evict":
                        if pinned[model]:
                            inv.fail(f"pinned {model} evicted ({e.get('reason')}) [event stream]; "
                                     f"its last events: {list(seen[model])}")
                        pinned[model] = False
                    elif kind == "unload":
                        pinned[model] = False
                    if stop.is_set():
                        return
        if not stop.is_set():
            inv.stream_error = "the event stream ended before the run did"
    except httpx.HTTPError as exc:
        if not stop.is_set():
            inv.stream_error = f"the event stream failed: {exc!r}"
    finally:
        ready.set()


def sample_processes(inv: Invariants, stop: threading.Event) -> None:
    me = os.getpid()
    while not stop.is_set():
        per_model: dict[str, list[psutil.Process]] = defaultdict(list)
        for p in backend_children(me):
            name = _model_of(p)
            try:
                leader = p.ppid() == me  # a backend's own children (a pyenv shim's) are not backends
            except psutil.Error:
                continue
            if name and leader:
                per_model[name].append(p)
        inv.samples += 1
        for name, procs in per_model.items():
            if len(procs) > 1:
                procs = [p for p in procs if alive(p.pid)]  # one may have exited meanwhile
            if len(procs) > 1:
                info = []
                for p in procs:
                    try:
                        info.append((p.pid, p.status(), round(p.create_time(), 2), p.ppid()))
                    except psutil.Error:
                        info.append((p.pid, "gone"))
                inv.fail(f"{name} has {len(procs)} backend processes: {info}")
        time.sleep(0.02)


def check_health_pids(c: httpx.Client, inv: Invariants) -> None:
    """A pid ``/health`` lists as serving is alive (unless the next /health no longer lists it)."""
    health = c.get(f"{API}/health").json()
    for m in health["all_models_loaded"]:
        if m["pid"] and m["status"] in ("ready", "in_use") and not alive(m["pid"]):
            again = {x["model_name"]: x for x in c.get(f"{API}/health").json()["all_models_loaded"]}
            x = again.get(m["model_name"])
            if x and x["pid"] == m["pid"] and x["status"] in ("ready", "in_use"):
                inv.fail(f"/health lists dead pid {m['pid']} of {m['model_name']} as {x['status']}")


def quiet_check(c: httpx.Client, inv: Invariants, label: str) -> dict[str, Any]:
    """With no request running: /health equals the process table, and pools fit their limit."""
    def settled() -> dict[str, Any] | None:
        health = c.get(f"{API}/health").json()
        if any(m["status"] not in ("ready", "downsized") or m["in_flight"]
               for m in health["all_models_loaded"]):
            return None
        return health

    health = wait_for(settled, 60, f"router to settle ({label})")
    listed = {m["pid"] for m in health["all_models_loaded"] if m["pid"]}
    running = {p.pid for p in backend_children(os.getpid()) if p.ppid() == os.getpid()}
    if listed != running:
        inv.fail(f"{label}: /health pids {sorted(listed)} != running {sorted(running)}")
    limit = health["max_models"]["llm"]
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in health["all_models_loaded"]:
        by_type[m["type"]].append(m)
    for kind, members in by_type.items():
        pinned = sum(1 for m in members if m["pinned"])
        if limit != -1 and len(members) > limit and pinned < len(members):
            inv.fail(f"{label}: pool {kind} holds {len(members)} > {limit} with unpinned members")
    zombies = zombies_below(os.getpid())
    if zombies:
        inv.fail(f"{label}: zombies {zombies}")
    return health


def dump_router(server: EmbeddedServer) -> list[str]:
    """Where every thread and every task of the router's loop is (for a hang's post-mortem)."""
    import asyncio
    import sys
    import traceback

    out = [f"thread {tid}\n" + "".join(traceback.format_stack(frame)[-6:])
           for tid, frame in sys._current_frames().items()]
    try:
        for task in list(asyncio.all_tasks(server._loop)):
            out.append(f"task {task.get_name()}")
            coro: Any = task.get_coro()
            while coro is not None and getattr(coro, "cr_frame", None) is not None:
                frame = coro.cr_frame
                out.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
                coro = coro.cr_await
    except RuntimeError:  # the set changed while we read it
        pass
    router = server.router
    if router is not None:
        for m in router._table.entries():
            out.append(f"model {m.name} {m.state} in_flight={m.in_flight} waiters={m.waiters}")
        out.append(f"transitions {router._table.transitions.summary()}")
    return out


@pytest.mark.slow
@pytest.mark.timeout(TIME_CAP_S + 300)  # the cap, then the checkpoints and the shutdown
@pytest.mark.parametrize(("kind", "operations", "admissions"),
                         [("fake", 1500, 100), ("real", 200, 20)])
def test_random_operations_keep_invariants(kind, operations, admissions, tmp_path, monkeypatch,
                                           fake_llama_server_path, llama_server_path,
                                           default_model_file):
    """Runs until ``operations`` requests were answered and ``admissions`` admissions were
    checked inside the router, with two quiet checkpoints on the way and one at the end."""
    clear_fake_knobs(monkeypatch)
    if kind == "fake":
        monkeypatch.setenv("FAKE_LLAMA_TOKEN_DELAY", "0.01")  # streams overlap evictions
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    server = EmbeddedServer(
        data_dir=tmp_path / "data",
        settings=RouterSettings(max_loaded_models=2, stop_grace_s=2.0, restore_on_start=False,
                                watchdog_interval_s=1.0),
        llama_server_path=fake_llama_server_path if kind == "fake" else llama_server_path,
    )
    server.start()
    inv = Invariants()
    stop = threading.Event()  # the watchers: the run is over
    enough = threading.Event()  # the workers: enough work done
    stats: Counter[str] = Counter()
    threads: list[threading.Thread] = []
    emitted: Counter[str] = Counter()
    delivered: Counter[str] = Counter()
    try:
        client = api_client(server.url, server.token, timeout=httpx.Timeout(30, connect=10))
        for name in LLMS + EMBEDDERS:
            path = models_dir / f"{name}.gguf"
            if kind == "fake":
                path.write_bytes(b"GGUF" + name.encode())
            else:
                path.symlink_to(default_model_file)
            labels = ["embeddings"] if name in EMBEDDERS else ["llm"]
            r = client.post(f"{API}/pull", json={"model_name": name, "checkpoint": str(path),
                                                 "labels": labels})
            assert r.status_code == 200, r.text
        install_router_hooks(server, inv)
        count_router_events(server, inv)
        ready = threading.Event()
        threads.append(threading.Thread(target=watch_event_stream,
                                        args=(server, inv, stop, ready), daemon=True))
        threads.append(threading.Thread(target=sample_processes, args=(inv, stop), daemon=True))
        for t in threads:
            t.start()
        assert ready.wait(10)
        assert inv.stream_error is None, inv.stream_error

        paused = threading.Event()
        idle = [threading.Event() for _ in range(8)]

        def worker(idx: int) -> None:
            rng = random.Random(1000 + idx)
            with api_client(server.url, server.token,
                            timeout=httpx.Timeout(120, connect=10)) as c:
                while not enough.is_set():
                    if paused.is_set():
                        idle[idx].set()
                        time.sleep(0.02)
                        continue
                    idle[idx].clear()
                    op = rng.choices(
                        ["load", "unload", "unload_all", "pin", "set", "chat", "stream", "embed"],
                        [25, 10, 1, 20, 4, 20, 15, 5])[0]
                    name = rng.choice(LLMS + EMBEDDERS[:1]) if op in ("load", "unload", "pin") \
                        else rng.choice(LLMS)
                    try:
                        if op == "load":
                            body: dict[str, Any] = {"model_name": name}
                            pin = rng.choice([None, None, True, False])
                            if pin is not None:
                                body["pinned"] = pin
                            r = c.post(f"{API}/load", json=body)
                            allowed = {200, 409}
                        elif op == "unload":
                            r = c.post(f"{API}/unload", json={"model_name": name})
                            allowed = {200, 404}
                        elif op == "unload_all":
                            r = c.post(f"{API}/unload", json={})
                            allowed = {200}
                        elif op == "pin":
                            r = c.post("lemonade/internal/pin",
                                       json={"model_name": name, "pinned": rng.random() < 0.4})
                            allowed = {200, 404}
                        elif op == "set":
                            r = c.post("lemonade/internal/set",
                                       json={"max_loaded_models": rng.choice([1, 2, 2, 3, -1])})
                            allowed = {200}
                        elif op == "embed":
                            if kind == "real":
                                continue  # SmolLM2 has no pooling: real embeddings need options
                            r = c.post(f"{API}/embeddings",
                                       json={"model": rng.choice(EMBEDDERS), "input": "hi"})
                            allowed = {200, 409}
                        elif op == "chat":
                            r = c.post(f"{API}/chat/completions",
                                       json=chat_body(name, max_tokens=4))
                            allowed = {200, 409}
                        else:
                            with c.stream("POST", f"{API}/chat/completions",
                                          json=chat_body(name, stream=True, max_tokens=4)) as resp:
                                res = read_stream(resp)
                            # 409 before the first byte; after a ``: ping`` (it waited over
                            # the ping interval for a slot, then every slot got pinned) the
                            # same error can only come as an SSE error event.
                            pinned_out = (res.status == 200 and isinstance(res.error, dict)
                                          and res.error.get("code") == "slots_pinned_error")
                            if not (res.ok or (res.status == 409 and res.error) or pinned_out):
                                inv.fail(f"stream {name}: {res.status} {res.raw_tail!r}")
                            stats[f"stream_{res.status}"] += 1
                            inv.operation_done()
                            continue
                        stats[f"{op}_{r.status_code}"] += 1
                        inv.operation_done()
                        if r.status_code not in allowed:
                            inv.fail(f"{op} {name}: {r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        inv.fail(f"{op} {name}: {exc!r}")

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in workers:
            t.start()
        started = time.monotonic()
        checkpoints = 0

        def work_done() -> bool:
            return inv.operations >= operations and inv.admissions >= admissions

        try:
            while (not work_done() and not inv.violations and inv.stream_error is None
                   and time.monotonic() - started < TIME_CAP_S):
                time.sleep(0.1)
                try:
                    check_health_pids(client, inv)
                except httpx.TimeoutException:
                    write_artifact("concurrency_hang.json", {"dump": dump_router(server)})
                    raise
                if checkpoints < 2 and inv.operations >= (checkpoints + 1) * operations / 3:
                    paused.set()  # a quiet checkpoint: every worker idle, router settled
                    wait_for(lambda: all(e.is_set() for e in idle), 120, "workers to pause")
                    quiet_check(client, inv, f"checkpoint {checkpoints}")
                    checkpoints += 1
                    for e in idle:
                        e.clear()
                    paused.clear()
        finally:
            enough.set()
            for t in workers:
                t.join(180)
        elapsed = time.monotonic() - started
        health = quiet_check(client, inv, "end")
        # Every event the router emitted so far reaches the stream (which began with the history).
        with inv.lock:
            emitted, last_id = Counter(inv.router_kinds), inv.router_last_id
        wait_for(lambda: inv.stream_error is not None or inv.stream_last_id >= last_id, 30,
                 f"the event stream to deliver event {last_id}")
        with inv.lock:
            delivered = Counter(inv.stream_kinds)
        client.close()
    finally:
        stop.set()
        server.stop()
        for t in threads:
            t.join(5)
    # After stop: every backend gone and reaped (the autouse check looks again).
    assert not backend_children(os.getpid())
    assert not zombies_below(os.getpid())
    figures = {
        "backend": kind, "seconds": round(elapsed, 1), "operations": inv.operations,
        "admissions_checked": inv.admissions, "process_samples": inv.samples,
        "events_watched": inv.events, "checkpoints": checkpoints,
        "largest_pool_seen": dict(inv.max_seen), "violations": len(inv.violations),
        "by_op": dict(sorted(stats.items())),
        "events_by_kind": dict(sorted(delivered.items())),
        "loaded_at_end": len(health["all_models_loaded"]),
    }
    write_artifact(f"concurrency_{kind}.json", figures)
    assert not inv.violations, inv.violations
    assert inv.stream_error is None, inv.stream_error
    missing = {k: n - delivered[k] for k, n in emitted.items() if delivered[k] < n}
    assert not missing, f"events the router emitted but the stream did not deliver: {missing}"
    assert delivered["load"] > 0 and emitted["load"] > 0, (emitted, delivered)
    # Enough work, however long it took; falling short within the cap means a stalled router.
    assert work_done(), (f"the router stalled: {inv.operations}/{operations} operations and "
                         f"{inv.admissions}/{admissions} admissions in {elapsed:.0f} s")
    assert inv.samples > 50


@pytest.mark.timeout(60)
async def test_unload_racing_the_end_of_a_load_does_not_hang_the_router(
    tmp_path, fake_llama_server_path
):
    """Bug story: a transition task stayed listed in the router's transitions until its
    done-callback ran, one loop step after it finished. An unload (or an admission's eviction,
    or a request) that ran in between found the finished task, awaited it (which returns
    without yielding) and looped: the router's event loop spun forever, every request hung and
    shutdown left backends behind. Found by the random-operations run above (4 runs in 5 under
    load). Here an unload's eviction is scheduled from the load's last step, so it runs in
    that gap."""
    import asyncio

    from lemonade_jupyter.core.catalog import Catalog
    from lemonade_jupyter.core.decisions import EvictReason
    from lemonade_jupyter.core.router import Router

    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF" + bytes(60))
    catalog = Catalog(tmp_path / "data")
    catalog.add_user_model("user.w", str(weights))
    router = Router(catalog, RouterSettings(stop_grace_s=2.0),
                    llama_server_path=fake_llama_server_path, data_dir=tmp_path / "data",
                    log_dir=tmp_path / "logs")
    await router.start()
    racers: list[asyncio.Task[None]] = []
    table = router._table
    original = table._load_task

    async def load_then_race(m: Any, reason: str, retry: bool) -> None:
        await original(m, reason, retry)
        if not racers:  # once: load() would load again after the unload, and race again
            # Scheduled now, so its first step runs after this task finishes but before its
            # done-callbacks: the eviction path of an unload (or of an admission) in that gap.
            racers.append(asyncio.ensure_future(table.evict(m, EvictReason.MANUAL)))

    table._load_task = load_then_race  # type: ignore[method-assign]
    try:
        m = await router.load("user.w")  # load() wants the model ready: it loads it again
        await asyncio.wait_for(asyncio.gather(*racers), 20)
        kinds = [e.kind for e in router.events.recent() if e.model == "user.w"]
        assert kinds == ["load", "unload", "load"], kinds
        assert router.get_live("user.w") is m and m.backend is not None
    finally:
        await router.stop()
