"""Fault injection with real llama-server backends: kills, hangs, broken weights, a missing
engine, the crash-loop guard and a killed Jupyter server.

Every test drives a real ``jupyter server`` subprocess over HTTP, as a notebook would, and kills
or stops real backend processes under it.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.engines.llamacpp import INSTALL_HINT

from tests.helpers.artifacts import write_artifact
from tests.helpers.envelope import assert_envelope
from tests.helpers.http import API, chat_body, loaded, read_stream, sse_events
from tests.helpers.polling import wait_for
from tests.helpers.processes import ProcessWatcher, alive, backend_children, zombies_below


class EventTap:
    """Collects the router's SSE events on a thread (``lemonade/api/v1/events``)."""

    def __init__(self, server: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._server = server
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventTap:
        self._thread.start()
        assert self._ready.wait(30), "event stream did not open"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1)  # a daemon thread; it ends at the next event or with the server

    def _run(self) -> None:
        try:
            with self._server.client(timeout=httpx.Timeout(None, connect=10)) as c:
                with c.stream("GET", f"{API}/events", params={"last_event_id": 0}) as resp:
                    self._ready.set()
                    for event in sse_events(resp):
                        self.events.append({**event["data"], "received": time.time()})
                        if self._stop.is_set():
                            return
        except httpx.HTTPError:
            pass  # the server went away: the test is over
        finally:
            self._ready.set()

    def of(self, kind: str, model: str | None = None) -> list[dict[str, Any]]:
        return [e for e in list(self.events)
                if e["kind"] == kind and (model is None or e.get("model") == model)]


# --------------------------------------------------------------------------- SIGKILL under load
class Traffic:
    """Client-side bookkeeping of requests: what is in flight, what completed, per model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: dict[int, tuple[str, float]] = {}
        self.completed: list[tuple[str, float, float]] = []  # (model, started, ended)
        self._ids = iter(range(10**9))

    def begin(self, model: str) -> int:
        with self.lock:
            rid = next(self._ids)
            self.in_flight[rid] = (model, time.monotonic())
            return rid

    def end(self, rid: int, ok: bool) -> None:
        with self.lock:
            model, started = self.in_flight.pop(rid)
            if ok:
                self.completed.append((model, started, time.monotonic()))

    def straddling(self, model: str, since: float) -> bool:
        """A request of ``model`` that started before ``since`` is still running."""
        with self.lock:
            return any(m == model and t < since for m, t in self.in_flight.values())

    def served_since(self, model: str, since: float) -> bool:
        """A request of ``model`` that started after ``since`` completed successfully."""
        with self.lock:
            return any(m == model and t >= since for m, t, _e in self.completed)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_backends_under_8_clients(jupyter_factory, model_files):
    """30+ SIGKILLs of serving backends while 8 clients stream and post: every non-streaming
    request is answered (replayed once), every stream completes or ends with an SSE error event,
    the pin survives, and no zombie or orphan is left.

    Pacing, so that what is asserted is what the router promises: a request is replayed *once*,
    so no request may see two kills (the next kill of a model waits until every request that
    started before its previous kill is done); and the crash-loop guard rightly
    treats a backend that dies before it ever answered a request (and before 10 s of uptime) as
    part of a crash loop, so each victim is a *healthy* backend: it has answered at least one
    request. Within that, the moment of each kill is random (mid-stream, mid-prefill, idle).
    """
    server = jupyter_factory(max_loaded_models=2, watchdog_interval_s=0.5,
                             watchdog_probe_timeout_s=2.0, sse_ping_interval_s=0.5)
    models = ["user.pinned", "user.free"]
    watcher = ProcessWatcher(server.pid)
    with server.client() as c:
        for name in models:
            r = c.post(f"{API}/pull", json={"model_name": name,
                                            "checkpoint": model_files(name), "recipe": "llamacpp"})
            assert r.status_code == 200, r.text
        assert c.post(f"{API}/load", json={"model_name": "user.pinned", "pinned": True}).status_code == 200
        assert c.post(f"{API}/load", json={"model_name": "user.free"}).status_code == 200

    stop = threading.Event()
    stats: Counter[str] = Counter()
    failures: list[str] = []
    traffic = Traffic()

    def client_loop(idx: int) -> None:
        rng = random.Random(idx)
        streaming = idx % 2 == 0
        with server.client() as c:
            while not stop.is_set():
                model = rng.choice(models)
                body = chat_body(model, stream=streaming, max_tokens=rng.randint(4, 16))
                rid = traffic.begin(model)
                ok = False
                try:
                    if streaming:
                        with c.stream("POST", f"{API}/chat/completions", json=body) as resp:
                            res = read_stream(resp)
                        ok = res.ok
                        with traffic.lock:
                            if res.ok:
                                stats["stream_completed"] += 1
                            elif res.status == 200 and res.error is not None:
                                stats["stream_sse_error"] += 1
                            else:
                                failures.append(f"stream {model}: {res.status} {res.raw_tail!r}")
                    else:
                        resp = c.post(f"{API}/chat/completions", json=body)
                        ok = resp.status_code == 200 and bool(resp.json()["choices"])
                        with traffic.lock:
                            if ok:
                                stats["nonstream_answered"] += 1
                            else:
                                failures.append(f"post {model}: {resp.status_code} {resp.text[:300]}")
                except httpx.HTTPError as exc:
                    with traffic.lock:
                        failures.append(f"{'stream' if streaming else 'post'} {model}: {exc!r}")
                finally:
                    traffic.end(rid, ok)

    clients = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for t in clients:
        t.start()
    rng = random.Random(2024)
    killed: list[int] = []
    last_kill = {m: 0.0 for m in models}
    started = time.monotonic()
    try:
        with server.client() as c:
            # Per model: when its current backend was first seen serving.
            serving_since: dict[int, float] = {}
            progress = time.monotonic()
            while len(killed) < 32 and not failures:
                assert time.monotonic() - progress < 180, "no backend became killable in 180 s"
                watcher.sample()
                now_loaded = loaded(server.health(c))
                ripe = []
                for model in models:
                    e = now_loaded.get(model)
                    if not e or not e["pid"] or e["status"] not in ("ready", "in_use") \
                            or e["pid"] in killed:
                        continue
                    since = serving_since.setdefault(e["pid"], time.monotonic())
                    if not traffic.straddling(model, last_kill[model]) \
                            and traffic.served_since(model, since):
                        ripe.append((model, e["pid"]))
                if not ripe:
                    time.sleep(0.1)
                    continue
                model, pid = rng.choice(ripe)
                time.sleep(rng.uniform(0.0, 1.0))  # a random point in the backend's work
                if not alive(pid):
                    continue
                os.kill(pid, signal.SIGKILL)
                last_kill[model] = progress = time.monotonic()
                killed.append(pid)
                stats[f"kills_{model}"] += 1
                print(f"kill {len(killed)} {model} pid {pid} at {time.monotonic() - started:.1f} s",
                      dict(stats), flush=True)
    except AssertionError:
        now = time.monotonic()
        with traffic.lock:
            ages = sorted((m, round(now - t, 1)) for m, t in traffic.in_flight.values())
        with server.client() as c:
            print("DIAG kills", len(killed), dict(stats), "in flight", ages,
                  "health", loaded(server.health(c)))
        raise
    finally:
        stop.set()
        for t in clients:
            t.join(180)
    elapsed = time.monotonic() - started

    with server.client() as c:
        # The pinned model comes back by itself; its pin is intact.
        entry = wait_for(lambda: (e := loaded(server.health(c)).get("user.pinned"))
                         and e["status"] == "ready" and e, 180, "the pinned model reloaded")
        assert entry["pinned"] is True
        health = server.health(c)
        metrics = c.get("lemonade/metrics").text
    watcher.sample()
    figures = {
        "kills": len(killed), "seconds": round(elapsed, 1), **stats,
        "requests_answered": stats["nonstream_answered"] + stats["stream_completed"]
        + stats["stream_sse_error"],
        "failures": len(failures), "backend_pids_seen": len(watcher.seen),
    }
    write_artifact("fault_sigkill.json", figures)
    assert not failures, failures[:10]
    assert len(killed) >= 30
    assert stats["nonstream_answered"] > 0 and stats["stream_completed"] > 0
    # Every killed process is gone and reaped; /health names exactly the running backends.
    assert not [pid for pid in killed if alive(pid)]
    assert not zombies_below(server.pid)
    running = {p.pid for p in backend_children(server.pid)}
    listed = {m["pid"] for m in health["all_models_loaded"] if m["pid"]}
    assert running == listed, (running, listed)
    assert "lemonade_backend_crashes" in metrics


# --------------------------------------------------------------------------- SIGSTOP: hung backend
def test_sigstop_backend_is_noticed_killed_and_reloaded(jupyter_factory, default_model_file):
    interval, timeout, failures = 0.3, 0.5, 2
    budget = interval + failures * (interval + timeout)
    server = jupyter_factory(watchdog_interval_s=interval, watchdog_probe_timeout_s=timeout,
                             watchdog_probe_failures=failures)
    with server.client() as c, EventTap(server) as tap:
        assert c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL, "pinned": True}).status_code == 200
        old = loaded(server.health(c))[DEFAULT_MODEL]["pid"]
        os.kill(old, signal.SIGSTOP)
        stopped_at = time.time()
        # A request sent to the hung backend is answered once the watchdog has replaced it.
        resp = c.post(f"{API}/chat/completions", json=chat_body(DEFAULT_MODEL))
        answered = time.time() - stopped_at
        assert resp.status_code == 200, resp.text
        crash = wait_for(lambda: tap.of("crash", DEFAULT_MODEL), 30, "a crash event")[0]
        # The router reloads a pinned model by itself ("reload"); the replayed request may
        # get there first ("load"): either way one new backend, pin kept.
        reload = wait_for(lambda: [e for e in tap.of("reload", DEFAULT_MODEL)
                                   + tap.of("load", DEFAULT_MODEL) if e["id"] > crash["id"]],
                          60, "a new backend")[0]
        noticed = crash["time"] - stopped_at
        entry = loaded(server.health(c))[DEFAULT_MODEL]
        assert entry["pinned"] is True and entry["pid"] not in (None, old)
        assert crash["detail"]["pid"] == old and crash["reason"] == "crash"
        assert reload["detail"]["pinned"] is True
        assert not alive(old)
        assert not zombies_below(server.pid)
        write_artifact("fault_sigstop.json", {
            "probe_budget_s": budget, "noticed_and_killed_after_s": round(noticed, 2),
            "reloaded_after_s": round(reload["time"] - stopped_at, 2),
            "hung_request_answered_after_s": round(answered, 2)})
        # Noticed within the probe budget (plus scheduling slack on a shared 2-core machine).
        assert noticed <= budget + 1.5, (noticed, budget)
        c.post(f"{API}/unload", json={})


# --------------------------------------------------------------------------- corrupt GGUF
def _counting_llama_server(tmp_path: Path, real: str) -> tuple[str, Path]:
    """A wrapper that records each spawn, then execs the real llama-server."""
    counter = tmp_path / "spawns.txt"
    wrapper = tmp_path / "bin" / "llama-server"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$$" >> "{counter}"\nexec "{real}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return str(wrapper), counter


def _spawns(counter: Path) -> int:
    return len(counter.read_text().split()) if counter.exists() else 0


def test_corrupt_gguf_load_error_then_cooldown_without_restart_storm(
    jupyter_factory, tmp_path, llama_server_path, corrupt_gguf
):
    wrapper, counter = _counting_llama_server(tmp_path, llama_server_path)
    server = jupyter_factory(llama_server_path=wrapper, max_loaded_models=2,
                             crash_cooldown_s=3.0, watchdog_interval_s=0.3)
    with server.client() as c:
        assert c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL, "pinned": True}).status_code == 200
        r = c.post(f"{API}/pull", json={"model_name": "user.corrupt", "checkpoint": corrupt_gguf})
        assert r.status_code == 200, r.text
        base = _spawns(counter)

        first = c.post(f"{API}/load", json={"model_name": "user.corrupt"})
        assert first.status_code == 500, first.text
        err = assert_envelope(first)
        assert err["code"] == "model_load_error"
        # The engine's own reason, not a generic message.
        assert "llama-server" in err["message"] and any(
            w in err["message"].lower() for w in ("gguf", "failed", "error")), err["message"]
        assert _spawns(counter) - base == 2  # the first try and the one retry (rule 7)

        # During the cooldown the automatic path (auto-load on a request) gets 503 +
        # Retry-After and starts nothing: no restart storm.
        refused = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            resp = c.post(f"{API}/chat/completions", json=chat_body("user.corrupt"))
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["Retry-After"]) >= 1
            assert assert_envelope(resp)["code"] == "model_cooling_down"
            refused += 1
        assert _spawns(counter) - base == 2, "requests during the cooldown spawned backends"

        # An explicit /load is never refused: it is tried once, now (no retry), and its
        # failure comes back with the engine's reason; it counts, so the cooldown grows.
        again = c.post(f"{API}/load", json={"model_name": "user.corrupt"})
        assert again.status_code == 500, again.text
        assert "llama-server" in assert_envelope(again)["message"]
        assert _spawns(counter) - base == 3
        later = c.post(f"{API}/chat/completions", json=chat_body("user.corrupt"))
        assert later.status_code == 503
        assert int(later.headers["Retry-After"]) > 3
        spawned = _spawns(counter) - base
        assert spawned == 3
        # The pinned bystander was never touched.
        entry = loaded(server.health(c))[DEFAULT_MODEL]
        assert entry["pinned"] and entry["status"] == "ready"
        c.post(f"{API}/unload", json={})
    write_artifact("fault_corrupt_gguf.json", {"refused_503": refused, "spawns": spawned,
                                               "second_retry_after_s": later.headers["Retry-After"]})


# --------------------------------------------------------------------------- llama-server missing
def test_llama_server_missing_names_the_install_command(jupyter_factory, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    # Nothing configured, nothing in the environment, on PATH or in the cache, and the
    # prebuilt engine switched off.
    server = jupyter_factory(
        llama_server_path="",
        env={"LEMONADE_LLAMA_SERVER": None, "LEMONADE_CACHE_DIR": str(tmp_path / "no-cache"),
             "PATH": f"{empty}:/bin", "LEMONADE_PREBUILT": "0"},
    )
    with server.client() as c:
        for resp in (c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL}),
                     c.post(f"{API}/chat/completions", json=chat_body(DEFAULT_MODEL))):
            assert resp.status_code in (500, 503), resp.text
            err = assert_envelope(resp)
            assert err["code"] == "engine_missing"
            assert INSTALL_HINT in err["message"] and "not found" in err["message"]
        assert server.health(c)["all_models_loaded"] == []
        assert not backend_children(server.pid)


def test_llama_server_path_pointing_nowhere_names_the_install_command(jupyter_factory, tmp_path):
    missing = str(tmp_path / "nowhere" / "llama-server")
    server = jupyter_factory(llama_server_path=missing)
    with server.client() as c:
        resp = c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL})
        assert resp.status_code in (500, 503), resp.text
        err = assert_envelope(resp)
        assert err["code"] == "engine_missing"
        assert INSTALL_HINT in err["message"] and missing in err["message"]
        assert server.health(c)["all_models_loaded"] == []


# --------------------------------------------------------------------------- SIGKILL of Jupyter
@pytest.mark.slow
def test_sigkill_of_jupyter_server_leaves_no_backend_and_restart_restores(
    jupyter_factory, tmp_path, model_files
):
    root = tmp_path / "srv"
    server = jupyter_factory(root, restore_on_start=True, max_loaded_models=2)
    with server.client() as c:
        r = c.post(f"{API}/pull", json={"model_name": "user.mine", "checkpoint": model_files("mine"),
                                        "labels": ["llm", "custom"]})
        assert r.status_code == 200, r.text
        assert c.post(f"{API}/load", json={"model_name": "user.mine", "pinned": True,
                                            "ctx_size": 1024}).status_code == 200
        assert c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL}).status_code == 200
        pids = [m["pid"] for m in server.health(c)["all_models_loaded"]]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    server.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    server.proc.wait()
    wait_for(lambda: not any(alive(p) for p in pids), 5.0, "backends to die with the server")
    outlived = time.monotonic() - killed_at

    again = jupyter_factory(root, restore_on_start=True, max_loaded_models=2)
    with again.client() as c:
        models = {m["id"]: m for m in c.get(f"{API}/models").json()["data"]}
        assert models["user.mine"]["labels"] == ["llm", "custom"]
        now = wait_for(lambda: (h := loaded(again.health(c))) and len(h) == 2
                       and all(m["status"] == "ready" for m in h.values()) and h,
                       90, "both models restored")
        assert now["user.mine"]["pinned"] is True
        assert now[DEFAULT_MODEL]["pinned"] is False
        # The options it was loaded with came back too, not the defaults.
        assert now["user.mine"]["recipe_options"] == {"ctx_size": 1024}
        argv = psutil.Process(now["user.mine"]["pid"]).cmdline()
        assert argv[argv.index("--ctx-size") + 1] == "1024"
        assert not set(pids) & {m["pid"] for m in now.values()}
        c.post(f"{API}/unload", json={})
    write_artifact("fault_server_sigkill.json", {"backends": len(pids),
                                                 "all_dead_after_s": round(outlived, 2)})


# --------------------------------------------------------------------------- crash-loop guard
def test_kills_of_healthy_backends_never_cool_down_but_a_crash_loop_does(jupyter_factory):
    """What the crash-loop guard (threshold 2) counts, through the API.

    A backend that has answered a request is healthy: its death does not count and clears the
    record, so SIGKILLing healthy backends one after another never yields a 503. A backend that
    dies before it ever answered (and before 10 s of uptime) is indistinguishable from a crash
    loop (a model that segfaults at its first token, the OOM killer at every start): two of those
    within the window cool the model down (503 + Retry-After) instead of restarting it forever;
    the pin is kept and the next request after the cooldown reloads it.
    """
    server = jupyter_factory(crash_cooldown_s=3.0, crash_loop_threshold=2)
    with server.client() as c:
        assert c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL, "pinned": True}).status_code == 200
        pid = loaded(server.health(c))[DEFAULT_MODEL]["pid"]
        for _ in range(5):
            assert c.post(f"{API}/chat/completions", json=chat_body(DEFAULT_MODEL, max_tokens=2)).status_code == 200
            os.kill(pid, signal.SIGKILL)
            resp = c.post(f"{API}/chat/completions", json=chat_body(DEFAULT_MODEL, max_tokens=2))
            assert resp.status_code == 200, resp.text  # replayed on the reloaded backend
            entry = loaded(server.health(c))[DEFAULT_MODEL]
            assert entry["pinned"] and entry["pid"] != pid
            pid = entry["pid"]

        # Now a crash loop: the pinned model's automatic reloads die before they ever answer.
        # The first kill hits a backend that served (not counted); the next two are early
        # deaths, and two of those within the window cool the model down.
        os.kill(pid, signal.SIGKILL)
        for _ in range(2):
            fresh = wait_for(lambda: (e := loaded(server.health(c)).get(DEFAULT_MODEL))
                             and e["pid"] not in (None, pid) and e["status"] == "ready"
                             and e["pid"], 60, "the automatic reload of the pinned model")
            os.kill(fresh, signal.SIGKILL)
            pid = fresh
        resp = wait_for(lambda: (r := c.post(f"{API}/chat/completions",
                                             json=chat_body(DEFAULT_MODEL, max_tokens=2)))
                        .status_code == 503 and r, 30, "the cooldown")
        assert assert_envelope(resp)["code"] == "model_cooling_down"
        time.sleep(int(resp.headers["Retry-After"]) + 0.2)
        resp = c.post(f"{API}/chat/completions", json=chat_body(DEFAULT_MODEL, max_tokens=2))
        assert resp.status_code == 200, resp.text
        assert loaded(server.health(c))[DEFAULT_MODEL]["pinned"] is True
        c.post(f"{API}/unload", json={})


@pytest.mark.slow  # nine kills a second apart, each followed by reloads: a soak run
def test_kills_a_second_apart_each_followed_by_chat_and_load_are_all_answered(jupyter_factory):
    """A user (or something outside) kills a healthy, ready backend three times, a second
    apart. After each kill a chat and an explicit /load are answered 200, as the reference
    answers them: the crash-loop guard counts only failed starts and early deaths, and it never
    refuses an explicit /load. Then the same with the /load first, right after the kill, and
    with /load alone: those kills hit backends that never served, which the guard counts, and
    still every explicit /load is tried and answered, and the chat after them too."""
    server = jupyter_factory(crash_cooldown_s=3.0, crash_loop_threshold=2)
    answers = []
    with server.client() as c:
        assert c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL}).status_code == 200
        for order in (("chat", "load"), ("load", "chat"), ("load",)):
            for _ in range(3):
                pid = wait_for(lambda: (e := loaded(server.health(c)).get(DEFAULT_MODEL))
                               and e["status"] == "ready" and e["pid"], 60, "a ready backend")
                os.kill(pid, signal.SIGKILL)
                for step in order:
                    if step == "chat":
                        resp = c.post(f"{API}/chat/completions",
                                      json=chat_body(DEFAULT_MODEL, max_tokens=2))
                    else:
                        resp = c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL})
                    answers.append((step, resp.status_code))
                    assert resp.status_code == 200, (step, resp.text)
                assert loaded(server.health(c))[DEFAULT_MODEL]["pid"] != pid
                time.sleep(1.0)
        resp = c.post(f"{API}/chat/completions", json=chat_body(DEFAULT_MODEL, max_tokens=2))
        assert resp.status_code == 200, resp.text
        c.post(f"{API}/unload", json={})
    assert len(answers) == 15 and {code for _step, code in answers} == {200}


# --------------------------------------------------------------------------- port collisions
async def test_backend_never_adopts_a_port_another_process_serves(
    tmp_path, monkeypatch, fake_llama_server_path
):
    """Bug story: two backends starting at once can be handed the same free port. The one that
    lost the bind race polled the winner's public ``/health``, took the port for its own, and
    the router then sent its model's requests to another model's backend (401 "Invalid API
    Key" thanks to the per-backend keys; the wrong model without them). Found by the random
    operations run of test_concurrency.py. Now readiness also checks that the server on the
    port takes our key, and a foreign one means "retry on a new port"."""
    import http.server

    from lemonade_jupyter.core import backend as backend_module
    from lemonade_jupyter.core.catalog import Catalog
    from lemonade_jupyter.core.router import Router
    from lemonade_jupyter.core.settings import RouterSettings

    class Squatter(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self.send_response(200 if self.path == "/health" else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Squatter)
    taken = squatter.server_address[1]
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    handed: list[int] = []
    real_free_port = backend_module.free_port

    def free_port() -> int:
        handed.append(taken if not handed else real_free_port())
        return handed[-1]

    monkeypatch.setattr(backend_module, "free_port", free_port)
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF" + bytes(60))
    catalog = Catalog(tmp_path / "data")
    catalog.add_user_model("user.w", str(weights))
    router = Router(catalog, RouterSettings(), llama_server_path=fake_llama_server_path,
                    data_dir=tmp_path / "data", log_dir=tmp_path / "logs")
    await router.start()
    try:
        m = await router.load("user.w")
        assert handed[0] == taken and len(handed) >= 2
        assert m.backend.port != taken
        async with router.lease("user.w") as lease:
            resp = await router.http.post(lease.url + "/v1/chat/completions",
                                          json=chat_body("user.w"), headers=lease.headers())
            assert resp.status_code == 200, resp.text
    finally:
        await router.stop()
        squatter.shutdown()
        squatter.server_close()
