"""Section 5: the cost of decisions with a catalog of 1,000 models and 50 live backends.

The backends are the stdlib fake ``llama-server`` of the test suite (``tests/fakes``): what is
measured is the router, not inference. The catalog is 1,000 user models, each pointing at a
tiny file that starts with the GGUF magic, written in the Catalog's own format
(``ModelSpec.to_json`` through the project's atomic state-file writer) and read back by
``Catalog`` to check it.

* ``/health`` of a real Jupyter server holding the 50 live models, interleaved with Jupyter's
  own cheapest authenticated call (``GET /api/status``) as the baseline.
* The routing decision: ``await router.acquire(name)`` + ``router.release(lease)`` on a live
  model, in-process, with a Router in our own loop (1,000 models / 50 live) interleaved with a
  Router holding one model.
* The router's memory: RSS of the Jupyter server process before and after the 50 loads, and the
  Python heap the Router itself allocates (tracemalloc, in-process).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import tracemalloc
from pathlib import Path

import httpx
import psutil

from lemonade_jupyter.core.catalog import Catalog, ModelSpec
from lemonade_jupyter.core.router import Router
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.core.state_files import write_json_atomic

from .common import Context, Reps, interleaved
from .procs import BenchmarkError, JupyterServer
from .report import Row, Target

S5 = "5. Scale of decisions"
MB = 1024 * 1024


def make_catalog(root: Path, count: int) -> tuple[Path, list[str]]:
    """A data dir whose catalog holds ``count`` user models on tiny fake GGUF files."""
    gguf = root / "gguf"
    gguf.mkdir(parents=True, exist_ok=True)
    data = root / "lemonade-data"
    data.mkdir(parents=True, exist_ok=True)
    specs = []
    for i in range(count):
        path = gguf / f"m{i:04d}.gguf"
        path.write_bytes(b"GGUF" + bytes(60))
        specs.append(ModelSpec(name=f"user.scale-{i:04d}", checkpoint=str(path)))
    write_json_atomic(data / "user_models.json", [s.to_json() for s in specs])
    names = [s.name for s in specs]
    catalog = Catalog(data)
    if any(n not in catalog for n in names):
        raise BenchmarkError("the Catalog did not read back the generated models")
    return data, names


def _own_rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


async def _load_all(server: JupyterServer, names: list[str]) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        answers = await asyncio.gather(*(
            client.post(server.api("api/v1/load"), headers=server.headers,
                        json={"model_name": n}) for n in names))
    bad = [a for a in answers if a.status_code != 200]
    if bad:
        raise BenchmarkError(f"{len(bad)} loads failed, e.g. {bad[0].text[:300]}")


def _get_ms(client: httpx.Client, url: str, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = client.get(url, headers=headers)
    dt = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise BenchmarkError(f"GET {url}: HTTP {r.status_code}")
    return dt


def run_health(ctx: Context, live: int, catalog_size: int) -> None:
    root = ctx.tmp / "scale-server"
    data, names = make_catalog(root, catalog_size)
    server = JupyterServer(root, {
        "llama_server_path": ctx.fake_server, "max_loaded_models": -1,
        "restore_on_start": False,
    }, name="jupyter-scale")
    server.start()
    left: list[int] = []
    try:
        with httpx.Client(timeout=60) as client:
            status = server.url + "api/status"
            health = server.api("api/v1/health")
            arms = {"status": lambda: _get_ms(client, status, server.headers),
                    "health": lambda: _get_ms(client, health, server.headers)}
            time.sleep(2)  # let the server's own start-up work (extensions) finish first
            interleaved(arms, Reps(20, 20, 0))
            idle = interleaved(arms, ctx.reps(Reps(50, 100, 10), Reps(10, 10, 0)))
            rss0 = [_own_rss_mb(server.pid)]
            t0 = time.perf_counter()
            asyncio.run(_load_all(server, names[:live]))
            load_s = time.perf_counter() - t0
            n_live = len(client.get(health, headers=server.headers).json()["all_models_loaded"])
            if n_live != live:
                raise BenchmarkError(f"{n_live} models live, expected {live}")
            busy = interleaved(arms, ctx.reps(Reps(200, 400, 30), Reps(20, 20, 0)))
            rss1 = [_own_rss_mb(server.pid)]
            # As a dashboard polls it: every 1.1 s, so each call finds the last memory sample
            # older than /health's 1 s and takes a new one.
            polled: dict[str, list[float]] = {"status": [], "health": []}
            for _ in range(3 if ctx.smoke else 10):
                time.sleep(1.1)
                polled["health"].append(arms["health"]())
                polled["status"].append(arms["status"]())
            models = interleaved(
                {"status": arms["status"],
                 "models": lambda: _get_ms(client, server.api("api/v1/models"), server.headers)},
                ctx.reps(Reps(30, 60, 10), Reps(5, 5, 0)))
    finally:
        left = server.stop()
        shutil.rmtree(root / "gguf", ignore_errors=True)
    if left:
        raise BenchmarkError(f"backends left running after the server stopped: {left}")
    ctx.raw["scale_health_ms"] = {"idle": idle, "live": busy, "models": models,
                                  "polled": polled}
    ctx.add(Row(S5, f"/health, {catalog_size} models, 0 live", "ms", "GET /api/status",
                idle["status"], "GET /health", idle["health"], "median"))
    ctx.add(Row(S5, f"/health, {catalog_size} models, {live} live", "ms", "GET /api/status",
                busy["status"], "GET /health", busy["health"], "median",
                Target("max_value", 10.0, "< 10 ms")))
    ctx.add(Row(S5, f"/health polled every 1.1 s, {live} live", "ms", "GET /api/status",
                polled["status"], "GET /health", polled["health"], "median",
                Target("max_value", 10.0, "< 10 ms"),
                note="each call takes a fresh memory sample (RSS of every backend)"))
    ctx.add(Row(S5, f"/health p95, {live} live", "ms", "GET /api/status", busy["status"],
                "GET /health", busy["health"], "p95",
                note="includes the on-demand memory sample (at most once a second)"))
    ctx.add(Row(S5, f"/models, {catalog_size + 1} entries", "ms", "GET /api/status",
                models["status"], "GET /models", models["models"], "median"))
    ctx.add(Row(S5, f"Jupyter server RSS, {live} live", "MB", "0 live", rss0,
                f"{live} live", rss1, "median",
                note=f"{live} concurrent loads of the fake backend took {load_s:.1f} s"))
    ctx.sample_load()


async def _decisions(ctx: Context, live: int, catalog_size: int) -> None:
    big_data, names = make_catalog(ctx.tmp / "scale-inproc-big", catalog_size)
    small_data, small_names = make_catalog(ctx.tmp / "scale-inproc-small", 1)
    settings = RouterSettings(max_loaded_models=-1, restore_on_start=False)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    catalog = Catalog(big_data)
    heap_catalog = tracemalloc.get_traced_memory()[0] - base
    big = Router(catalog, settings, llama_server_path=ctx.fake_server, data_dir=big_data,
                 log_dir=ctx.tmp / "scale-inproc-logs")
    await big.start()
    heap_idle = tracemalloc.get_traced_memory()[0] - base
    small: Router | None = None
    try:
        await asyncio.gather(*(big.load(n) for n in names[:live]))
        heap_live = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        small = Router(Catalog(small_data), settings, llama_server_path=ctx.fake_server,
                       data_dir=small_data, log_dir=ctx.tmp / "scale-inproc-logs")
        await small.start()
        await small.load(small_names[0])
        reps = ctx.reps(Reps(3000, 3000, 0), Reps(300, 300, 0))
        samples: dict[str, list[float]] = {"small": [], "big": []}
        for i in range(reps.max):
            pairs = [("small", small, small_names[0]), ("big", big, names[i % live])]
            for label, router, name in (pairs if i % 2 == 0 else pairs[::-1]):
                t0 = time.perf_counter_ns()
                lease = await router.acquire(name)
                router.release(lease)
                samples[label].append((time.perf_counter_ns() - t0) / 1000)
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the routers' own tasks run between batches
        await big.memory.sample()  # every live model gets its measured figure
        admission_us = _admission_decisions(big, ctx.reps(Reps(2000, 2000, 0),
                                                          Reps(200, 200, 0)).max)
        mem_reps = ctx.reps(Reps(15, 15, 0), Reps(3, 3, 0))
        sampling: dict[str, list[float]] = {"small": [], "big": []}
        for i in range(mem_reps.max):
            pairs = [("small", small), ("big", big)]
            for label, router in (pairs if i % 2 == 0 else pairs[::-1]):
                t0 = time.perf_counter()
                await router.memory.sample()
                sampling[label].append((time.perf_counter() - t0) * 1000)
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        await big.stop()
        if small is not None:
            await small.stop()
    ctx.raw["decision_us"] = samples
    ctx.raw["router_heap_bytes"] = {"catalog": heap_catalog, "router_idle": heap_idle,
                                    "router_live": heap_live}
    ctx.add(Row(S5, "routing decision: acquire()+release(), live model", "µs",
                "1 model, 1 live", samples["small"],
                f"{catalog_size} models, {live} live", samples["big"], "median",
                Target("max_value", 200.0, "< 200 µs (0.2 ms)")))
    ctx.add(Row(S5, "routing decision p95", "µs", "1 model, 1 live", samples["small"],
                f"{catalog_size} models, {live} live", samples["big"], "p95"))
    ctx.raw["admission_decision_us"] = admission_us
    ctx.add(Row(S5, f"admission decision, {live} live models", "µs",
                "slots only (decisions.admission)", admission_us["slots"],
                "slots + fit on RAM with a budget (FitAdmission.victims)", admission_us["fit"],
                "median", Target("max_value", 1000.0, "< 1 ms"),
                note="the pure decisions a fresh load takes before it starts a backend"))
    ctx.raw["memory_sample_ms"] = sampling
    ctx.add(Row(S5, "memory sample (RSS of every backend), as /health takes it", "ms",
                "1 live", sampling["small"], f"{live} live", sampling["big"], "median",
                note="MemoryMonitor.sample(); /health takes one when the last is over 1 s old"))
    ctx.add(Row(S5, "router's Python heap (tracemalloc)", "MB",
                f"catalog of {catalog_size} + router, 0 live", [heap_idle / MB],
                f"+ {live} live backends", [heap_live / MB], "median",
                note=f"the catalog alone: {heap_catalog / MB:.2f} MB"))


def _admission_decisions(router: Router, reps: int) -> dict[str, list[float]]:
    """The decisions of one fresh load with ``router``'s live models: the slot decision
    alone, and with admission by fit on RAM under a budget that needs a victim."""
    from lemonade_jupyter.core.decisions import admission, pool
    from lemonade_jupyter.core.live_model import LiveModel

    table = router._table
    live = table.live()
    held = sum(m.held_on("cpu") for m in live)
    router.settings = router.settings.with_updates({"memory_budget_mib": held / MB + 1})
    newcomer = LiveModel(spec=live[0].spec, preferences=router.preferences,
                         changes=router._changes, estimate_bytes=int(2 * MB))
    samples: dict[str, list[float]] = {"slots": [], "fit": []}
    sample = router.memory.latest
    assert sample is not None
    for i in range(reps):
        for label in (("slots", "fit") if i % 2 == 0 else ("fit", "slots")):
            t0 = time.perf_counter_ns()
            members = pool(table.snapshots(), "llm")
            admission(members, router.settings.max_loaded_models)
            if label == "fit":
                victims = table.fit.victims(newcomer, live, sample)
                assert victims, "the budget must need a victim"
            samples[label].append((time.perf_counter_ns() - t0) / 1000)
    router.settings = router.settings.with_updates({"memory_budget_mib": None})
    return samples


def run_decisions(ctx: Context, live: int, catalog_size: int) -> None:
    asyncio.run(_decisions(ctx, live, catalog_size))
    ctx.sample_load()
