"""Load: 64 concurrent streaming clients across 2 real models, 150 s or more.

Through a real ``jupyter server`` and its router: zero failed requests, every stream ends with
``[DONE]``, no backend restarted (the watchdog must not take a busy backend for a hung one), and
the Jupyter server's memory (RSS of its process) stays flat after warm-up.

Why 150 s and not 60: the server's RSS climbs by about 6 MiB over the first 100-110 s of this
load and is then flat to the MiB (a 180 s run: 92.8 MiB at 15 s, 98.2 at 110 s, 98.3 from 126 s
to the end), while tracemalloc shows no growth of Python objects (the second test below). It is
the allocator settling, and a 60 s run ends inside it. So the test runs past it, on until the
last 40 s are flat (at most 300 s), and checks that flatness, plus a bound on all growth after
the first 15 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import threading
import time
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers.artifacts import write_artifact
from tests.helpers.http import API, chat_body, loaded

#: Every test here is a soak test: the slow tier (``pytest -m slow``).
pytestmark = pytest.mark.slow

CLIENTS = 64
#: The load runs at least this long, then on until the last FLAT_WINDOW_S are flat, at most
#: MAX_SECONDS: when the allocator settles depends on the machine's load (this suite saw the
#: plateau at 100-110 s on a quiet machine and at 140 s while other test runs shared the cores).
SECONDS = float(os.environ.get("LEMONADE_LOAD_SECONDS", "150"))
MAX_SECONDS = 300.0
WARMUP_S = 15.0
#: Allowed RSS growth of the Jupyter server from WARMUP_S to the end (measured: 5.5 MiB).
RSS_GROWTH_LIMIT = 12 * 1024 * 1024
#: The final window that must be flat, and how flat (measured: 0.1 MiB; the climb before the
#: plateau ran at about 2.5 MiB per 40 s, so a creep of that size fails).
FLAT_WINDOW_S = 40.0
FLAT_LIMIT = 1.5 * 1024 * 1024


async def stream_once(client: httpx.AsyncClient, model: str, max_tokens: int) -> tuple[bool, int, str]:
    """One streaming chat; (completed, content chunks, what went wrong)."""
    body = chat_body(model, stream=True, max_tokens=max_tokens, prompt="Count to ten.")
    chunks = 0
    done = False
    try:
        async with client.stream("POST", f"{API}/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                return False, 0, f"{resp.status_code} {(await resp.aread())[:200]!r}"
            buf = b""
            async for raw in resp.aiter_raw():
                buf += raw
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    payload = event[6:]
                    if payload == b"[DONE]":
                        done = True
                        continue
                    data = json.loads(payload)
                    if "error" in data:
                        return False, chunks, f"SSE error {data['error']}"
                    chunks += 1
    except httpx.HTTPError as exc:
        return False, chunks, repr(exc)
    return done, chunks, "" if done else "stream ended without [DONE]"


@pytest.mark.timeout(600)
def test_64_streaming_clients_memory_flat_after_warmup(jupyter_factory, model_files):
    server = jupyter_factory(max_loaded_models=2, sse_ping_interval_s=2.0)
    models = ["user.load1", "user.load2"]
    with server.client() as c:
        for name in models:
            r = c.post(f"{API}/pull", json={"model_name": name, "checkpoint": model_files(name)})
            assert r.status_code == 200, r.text
            r = c.post(f"{API}/load", json={"model_name": name, "pinned": True})
            assert r.status_code == 200, r.text
        pids_before = {n: m["pid"] for n, m in loaded(server.health(c)).items()}

    proc = psutil.Process(server.pid)
    rss: list[tuple[float, int]] = []
    sampling = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not sampling.is_set():
            rss.append((time.monotonic() - started, proc.memory_info().rss))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def settled() -> bool:
        """Ran long enough, and the last window is flat (or the cap is reached)."""
        now = time.monotonic() - started
        if now >= MAX_SECONDS:
            return True
        window = [r for t, r in list(rss) if t >= now - FLAT_WINDOW_S]
        return now >= SECONDS and bool(window) and max(window) - window[0] <= FLAT_LIMIT

    async def run() -> dict[str, Any]:
        results: dict[str, Any] = {"ok": 0, "failed": 0, "chunks": 0, "errors": [],
                                   "latencies": []}
        stop = asyncio.Event()

        async def watch() -> None:
            while not settled():
                await asyncio.sleep(1.0)
            stop.set()
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), limits=limits,
                                     timeout=httpx.Timeout(180, connect=30)) as client:
            async def one_client(i: int) -> None:
                model = models[i % 2]
                n = 0
                while not stop.is_set():
                    t0 = time.monotonic()
                    ok, chunks, why = await stream_once(client, model, 8 + (i + n) % 9)
                    n += 1
                    results["chunks"] += chunks
                    if ok:
                        results["ok"] += 1
                        results["latencies"].append(time.monotonic() - t0)
                    else:
                        results["failed"] += 1
                        results["errors"].append(why)

            await asyncio.gather(watch(), *(one_client(i) for i in range(CLIENTS)))
        return results

    try:
        results = asyncio.run(run())
    finally:
        sampling.set()
        sampler.join(5)
    elapsed = time.monotonic() - started

    with server.client() as c:
        health = loaded(server.health(c))
        metrics = c.get("lemonade/metrics").text
        c.post(f"{API}/unload", json={})
    after_warmup = [r for t, r in rss if t >= WARMUP_S]
    rss_warm = after_warmup[0] if after_warmup else rss[-1][1]
    rss_end = rss[-1][1]
    window = [r for t, r in rss if t >= rss[-1][0] - FLAT_WINDOW_S]
    crashes = [ln for ln in metrics.splitlines()
               if ln.startswith("lemonade_backend_crashes_total")]
    lat = sorted(results["latencies"])
    figures = {
        "clients": CLIENTS, "seconds": round(elapsed, 1), "models": len(models),
        "requests_completed": results["ok"], "requests_failed": results["failed"],
        "content_chunks": results["chunks"],
        "latency_p50_s": round(statistics.median(lat), 2) if lat else None,
        "latency_p95_s": round(lat[int(len(lat) * 0.95) - 1], 2) if lat else None,
        "server_rss_start_mib": round(rss[0][1] / 2**20, 1),
        "server_rss_after_warmup_mib": round(rss_warm / 2**20, 1),
        "server_rss_end_mib": round(rss_end / 2**20, 1),
        "server_rss_max_after_warmup_mib": round(max(after_warmup or [rss_end]) / 2**20, 1),
        "server_rss_final_window_s": FLAT_WINDOW_S,
        "server_rss_final_window_growth_mib": round((max(window) - window[0]) / 2**20, 2),
        "server_rss_series_mib": [(round(t), round(r / 2**20, 1)) for t, r in rss[::10]],
        "backend_crashes_metric": crashes,
        "errors_sample": results["errors"][:5],
    }
    write_artifact("load.json", figures)
    assert results["failed"] == 0, results["errors"][:10]
    assert results["ok"] >= CLIENTS
    # No backend was restarted: the watchdog never took a busy backend for a hung one.
    assert {n: m["pid"] for n, m in health.items()} == pids_before
    assert all(m["pinned"] for m in health.values())
    assert rss_end - rss_warm <= RSS_GROWTH_LIMIT, figures
    assert max(window) - window[0] <= FLAT_LIMIT, figures


@pytest.mark.timeout(300)
def test_router_and_proxy_hold_no_memory_per_request(tmp_path, fake_llama_server_path,
                                                     monkeypatch):
    """RSS moves with the allocator; Python objects do not lie: after warm-up, batches of
    streamed requests through the embedded server (same handlers and router) leave no traced
    allocation behind."""
    import gc
    import tracemalloc

    from lemonade_jupyter.core.settings import RouterSettings
    from lemonade_jupyter.server.embedded import EmbeddedServer

    for knob in ("FAKE_LLAMA_TOKEN_DELAY", "FAKE_LLAMA_CRASH_AFTER_REQUESTS"):
        monkeypatch.delenv(knob, raising=False)
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF" + bytes(60))
    server = EmbeddedServer(data_dir=tmp_path / "data", settings=RouterSettings(max_loaded_models=2),
                            llama_server_path=fake_llama_server_path)
    server.start()
    headers = {"Authorization": f"token {server.token}"}

    async def batch(n: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60,
                                     limits=httpx.Limits(max_connections=32)) as client:
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                async with sem:
                    ok, _chunks, why = await stream_once(client, f"user.m{i % 2}", 8)
                    assert ok, why

            await asyncio.gather(*(one(i) for i in range(n)))

    traced = []
    access = logging.getLogger("tornado.access")
    level = access.level
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
            for name in ("user.m0", "user.m1"):
                assert c.post(f"{API}/pull", json={"model_name": name,
                                                   "checkpoint": str(weights)}).status_code == 200
                assert c.post(f"{API}/load", json={"model_name": name,
                                                   "pinned": True}).status_code == 200
        asyncio.run(batch(150))  # warm-up: pools, caches, lazily built objects
        # Count what is allocated under our code (a lemonade_jupyter frame anywhere in the
        # stack: the handlers, the router, the proxy and what they call): the test process
        # also runs threads that earlier tests left to the garbage collector, whose
        # allocations made the whole-process figure grow in a full suite run, not alone.
        ours = [tracemalloc.Filter(True, "*lemonade_jupyter*", all_frames=True)]

        def settled_traced() -> int:
            """Our traced bytes once the server has let go of the batch's connections.

            Each batch's client closes its 32 keep-alive connections on the way out; until the
            server's loop has seen those closes, each connection still holds its last request
            and handler (most of a batch's traced growth in a full suite run, where the loop is
            slower to get to them). So measure until the figure stops falling (3 s at most)."""
            best = None
            for _ in range(12):
                gc.collect()
                snap = tracemalloc.take_snapshot().filter_traces(ours)
                now = sum(stat.size for stat in snap.statistics("filename"))
                if best is not None and now >= best - 1024:
                    return min(best, now)
                best = now if best is None else min(best, now)
                time.sleep(0.25)
            return best or 0

        # Each request's access-log record is ours to make but not to keep: in a full suite
        # run, handlers that earlier tests attached keep every record (about 1.4 KB per request
        # there, 0 alone). The router and proxy are what this test measures.
        access.setLevel(logging.WARNING)
        tracemalloc.start(40)
        for _ in range(4):
            asyncio.run(batch(150))
            traced.append(settled_traced())
    finally:
        tracemalloc.stop()
        access.setLevel(level)
        server.stop()
    growth = traced[-1] - min(traced)
    write_artifact("load_traced_memory.json", {"requests": 750, "traced_bytes": traced,
                                               "growth_bytes": growth})
    # The process also holds the test's own client objects: allow noise, not ~1 KB/request.
    assert growth < 512 * 1024, traced
