"""Models on GPUs, without a GPU: fake NVML with several devices and fake backends.

The fake NVML counts 1 GiB on a GPU for every running fake backend whose command line puts it
there (``--device CUDAi``), in its used memory and, when asked to, in its per-process lists (in
containers NVML often lists no processes). The engine is a fake CUDA build: it answers the
router's probe with a recorded ``--list-devices`` output (tests/data/engines/), so it offloads
because it says so. What is checked: placement and its flags, ``/health``'s per-device figures
and their sources, admission by fit on one GPU (with a pinned model: 409), pressure on one GPU
evicting only models there, models spread across the fewest GPUs of 2 and 4 (``--tensor-split``)
with fit, pins and pressure counting them on each, refusals with every device's figures, and
an engine without NVML (ROCm) placed on the devices it listed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from lemonade_jupyter.core.catalog import Catalog
from lemonade_jupyter.core.gguf_facts import read_facts
from lemonade_jupyter.core.memory_sources import ModelMemory
from lemonade_jupyter.core.options import parse_load_options
from lemonade_jupyter.core.router import Router
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import InsufficientMemoryError, InvalidRequestError
from lemonade_jupyter.server.views import health_view

from tests.eviction.test_nvml import FakeNvml, proc
from tests.fakes.fake_engine import write_engine

from .conftest import events, ready_pid

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024
PER_BACKEND = GIB


def gpu_of(p: psutil.Process) -> list[int]:
    try:
        argv = p.cmdline()
    except psutil.Error:
        return []
    if "--device" not in argv:
        return []
    return [int(d.removeprefix("CUDA")) for d in argv[argv.index("--device") + 1].split(",")]


class GpuBox(FakeNvml):
    """Fake NVML whose used memory and process lists follow the running fake backends."""

    def __init__(self, gpus: list[tuple[int, int]], *, lists: bool) -> None:
        super().__init__([{"name": f"Fake GPU {i}", "uuid": f"GPU-{i}", "total": total,
                           "used": used} for i, (total, used) in enumerate(gpus)])
        self.lists = lists

    def _backends_on(self, index: int) -> list[int]:
        me = psutil.Process()
        return [p.pid for p in me.children(recursive=True) if index in gpu_of(p)]

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        info = super().nvmlDeviceGetMemoryInfo(handle)
        info.used += PER_BACKEND * len(self._backends_on(handle[1]))
        info.free = info.total - info.used
        return info

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802
        if not self.lists:
            return []
        return [proc(pid, PER_BACKEND) for pid in self._backends_on(handle[1])]


@pytest.fixture
def gpu_router(catalog: Catalog, data_dir: Path, tmp_path: Path):
    @contextlib.asynccontextmanager
    async def factory(gpus: list[tuple[int, int]], *, lists: bool = True, build: str = "cuda",
                      **settings: Any) -> AsyncIterator[Router]:
        engine = write_engine(tmp_path / f"engine-{build}", build)
        nvml = GpuBox(gpus, lists=lists) if gpus else FakeNvml([])
        router = Router(catalog, RouterSettings(), llama_server_path=str(engine),
                        data_dir=data_dir, log_dir=tmp_path / "logs", nvml=nvml)
        router.replace_settings(**{"stop_grace_s": 1.0, "max_loaded_models": -1, **settings})
        try:
            await router.start()
            yield router
        finally:
            await router.stop()

    return factory


async def load(router: Router, name: str, *, pinned: bool | None = None, **body: Any):
    options, given = parse_load_options(body)
    return await router.load(name, options=options, given=given, pinned=pinned)


def argv_of(router: Router, name: str) -> list[str]:
    return psutil.Process(router.get_live(name).backend.pid).cmdline()


async def test_gpu_placement_flags_and_health_figures_with_process_lists(gpu_router):
    async with gpu_router([(80 * GIB, 60 * GIB), (80 * GIB, 20 * GIB)]) as router:
        await load(router, "user.m1")  # auto: GPU 1 has the most free memory
        await load(router, "user.m2", device=0, gpu_layers=12)
        await load(router, "user.m3", device=[0, 1])
        await load(router, "user.m4", device="cpu")
        argv = argv_of(router, "user.m1")
        assert argv[argv.index("--device") + 1] == "CUDA1"
        assert argv[argv.index("--n-gpu-layers") + 1] == "999"
        assert "-lv" in argv  # the engine's buffer report, for containers without NVML lists
        argv = argv_of(router, "user.m2")
        assert argv[argv.index("--device") + 1] == "CUDA0"
        assert argv[argv.index("--n-gpu-layers") + 1] == "12"
        argv = argv_of(router, "user.m3")
        assert argv[argv.index("--device") + 1] == "CUDA0,CUDA1"
        assert argv[argv.index("--split-mode") + 1] == "layer"
        argv = argv_of(router, "user.m4")
        assert argv[argv.index("--n-gpu-layers") + 1] == "0" and "--device" not in argv

        health = health_view(router, await router.memory.sample())
        entries = {e["model_name"]: e for e in health["all_models_loaded"]}
        m1 = entries["user.m1"]
        assert m1["placement"] == {"device": [1], "gpu_uuids": ["GPU-1"], "gpu_layers": "all"}
        assert m1["memory_by_device"]["GPU-1"] == {"bytes": PER_BACKEND, "source": "nvml_process"}
        assert m1["memory_source"] == {"GPU-1": "nvml_process", "cpu": "process_rss"}
        assert m1["memory_bytes"] == PER_BACKEND
        m3 = entries["user.m3"]
        assert set(m3["memory_by_device"]) == {"GPU-0", "GPU-1", "cpu"}
        assert m3["memory_bytes"] == 2 * PER_BACKEND
        m4 = entries["user.m4"]
        assert m4["placement"]["device"] == "cpu"
        assert m4["memory_source"] == {"cpu": "process_rss"} and m4["memory_bytes"] > 0


async def test_gpu_figures_without_process_lists_come_from_the_load_delta(gpu_router):
    async with gpu_router([(80 * GIB, 20 * GIB)], lists=False) as router:
        await load(router, "user.m1")
        await router.memory.sample()
        m = router.get_live("user.m1")
        # The fake backend logs no buffer sizes; the device's change across the load remains.
        assert m.memory.gpu["GPU-0"].source == "device_delta"
        assert m.memory.gpu["GPU-0"].bytes == PER_BACKEND
        assert m.memory_bytes == PER_BACKEND


async def test_gpu_unknown_device_is_a_400_that_changes_nothing(gpu_router):
    async with gpu_router([(80 * GIB, 20 * GIB)]) as router:
        first = await load(router, "user.m1", ctx_size=1024)
        pid = first.backend.pid
        for body in ({"device": 3}, {"device": [0, 1]}):
            with pytest.raises(InvalidRequestError):
                await load(router, "user.m1", **body)
        assert router.get_live("user.m1") is first and first.backend.pid == pid
        assert first.options.device is None and not events(router, "reload")


async def test_gpu_fit_evicts_the_lru_model_on_that_gpu_only(gpu_router):
    # GPU 0 has 1.5 GiB free before the reserve (0.5 GiB): one backend, then it is full.
    gpus = [(16 * GIB, int(14.5 * GIB)), (80 * GIB, 20 * GIB)]
    async with gpu_router(gpus) as router:
        await load(router, "user.m1", device=0)
        await load(router, "user.m2", device=1)
        await load(router, "user.m3", device=0)  # needs ~0.2 GiB on GPU 0: m1 must go
        assert router.get_live("user.m1") is None
        assert ready_pid(router, "user.m2") and ready_pid(router, "user.m3")
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.m1", "fit")]


async def test_gpu_fit_with_the_gpu_held_by_a_pinned_model_is_a_409(gpu_router):
    gpus = [(16 * GIB, int(14.5 * GIB))]
    async with gpu_router(gpus) as router:
        await router.load("user.m1", pinned=True)
        with pytest.raises(InsufficientMemoryError) as info:
            await load(router, "user.m2", device=0)
        body = info.value.to_body()["error"]
        assert body["pinned_bytes"] == PER_BACKEND and body["needed_bytes"] > body["free_bytes"]
        assert "GPU 0" in body["message"]
        assert ready_pid(router, "user.m1") and router.get_live("user.m2") is None
        assert not events(router, "evict")


async def test_gpu_pressure_on_one_device_evicts_only_models_there(gpu_router):
    async with gpu_router([(80 * GIB, 10 * GIB), (80 * GIB, 10 * GIB)],
                          auto_evict=True, eviction_grace_s=0.0) as router:
        await load(router, "user.m1", device=0)
        await load(router, "user.m2", device=1)
        await load(router, "user.m3", device="cpu")
        for m in router.live_models():
            m.last_use -= 30  # idle, but not for the idle timeouts
        done = await router.evaluate_eviction({"GPU-0": 0.97, "GPU-1": 0.30, "cpu": 0.30})
        assert [(d.model, d.reason.value) for d in done] == [("user.m1", "pressure")]
        assert ready_pid(router, "user.m2") and ready_pid(router, "user.m3")
        # RAM under pressure takes the model on the CPU, not one on a GPU.
        done = await router.evaluate_eviction({"GPU-0": 0.30, "GPU-1": 0.30, "cpu": 0.97})
        assert [d.model for d in done] == ["user.m3"]
        assert ready_pid(router, "user.m2")


# ---------------------------------------------------------------- several GPUs for one model
CTX = 2048  # every load names its context, so the estimate below is the router's


@pytest.fixture
def need(default_model_file: str) -> int:
    """The router's estimate for the test models at ``CTX`` (the GGUF header's)."""
    return read_facts(default_model_file).estimate_bytes(CTX)


def with_free(total: int, free: float) -> tuple[int, int]:
    """A GPU of ``total`` bytes with ``free`` bytes free (``(total, used)`` for GpuBox)."""
    return total, total - int(free)


def split_of(argv: list[str]) -> list[int]:
    return [int(w) for w in argv[argv.index("--tensor-split") + 1].split(",")]


async def test_gpu_auto_spreads_over_the_fewest_gpus_of_four_in_proportion(gpu_router, need):
    """No GPU holds it alone: the two with the most free memory do, each taking a share in
    proportion to its free memory; the sizes differ (two 80 GiB, two 24 GiB)."""
    gpus = [with_free(80 * GIB, 0.30 * need), with_free(80 * GIB, 0.45 * need),
            with_free(24 * GIB, 0.60 * need), with_free(24 * GIB, 0.20 * need)]
    async with gpu_router(gpus, gpu_memory_reserve_mib=0) as router:
        await load(router, "user.m1", ctx_size=CTX)
        argv = argv_of(router, "user.m1")
        assert argv[argv.index("--device") + 1] == "CUDA1,CUDA2"
        assert argv[argv.index("--split-mode") + 1] == "layer"
        split = split_of(argv)
        assert split == [int(0.45 * need) // MIB, int(0.60 * need) // MIB]
        m = router.get_live("user.m1")
        assert m.placement.to_json()["device"] == [1, 2]
        assert m.placement.to_json()["tensor_split"] == split
        # It counts on both GPUs, each by its share (what fit and eviction read).
        assert {"GPU-1", "GPU-2"} <= set(m.devices())
        shares = (m.placement.share("GPU-1"), m.placement.share("GPU-2"))
        assert shares == pytest.approx((split[0] / sum(split), split[1] / sum(split)))
        assert m.placement.share("GPU-0") == 0.0
        # Unmeasured (a model still loading), its estimate counts on each GPU by its share.
        m.memory = ModelMemory()
        assert (m.held_on("GPU-1"), m.held_on("GPU-2"), m.held_on("GPU-0")) == (
            int(need * shares[0]), int(need * shares[1]), 0)


async def test_gpu_auto_picks_one_gpu_when_the_most_free_one_holds_it(gpu_router, need):
    gpus = [with_free(80 * GIB, 2 * need), with_free(24 * GIB, 3 * need)]
    async with gpu_router(gpus, gpu_memory_reserve_mib=0) as router:
        await load(router, "user.m1", ctx_size=CTX)
        argv = argv_of(router, "user.m1")
        assert argv[argv.index("--device") + 1] == "CUDA1" and "--tensor-split" not in argv


async def test_gpu_pressure_on_one_of_its_gpus_evicts_a_spread_model(gpu_router, need):
    gpus = [with_free(80 * GIB, 4 * GIB), with_free(24 * GIB, 4 * GIB),
            with_free(24 * GIB, 5 * GIB)]
    async with gpu_router(gpus, gpu_memory_reserve_mib=0, auto_evict=True,
                          eviction_grace_s=0.0) as router:
        await load(router, "user.m1", ctx_size=CTX)  # GPU 2: the most free memory
        await load(router, "user.m2", ctx_size=CTX, device=[0, 1])
        assert router.get_live("user.m1").placement.gpus == (2,)
        assert router.get_live("user.m2").placement.gpus == (0, 1)
        for m in router.live_models():
            m.last_use -= 30
        done = await router.evaluate_eviction({"GPU-0": 0.30, "GPU-1": 0.97, "GPU-2": 0.30})
        assert [(d.model, d.reason.value) for d in done] == [("user.m2", "pressure")]
        assert ready_pid(router, "user.m1")


async def test_gpu_auto_spreads_in_free_memory_before_it_evicts(gpu_router, need):
    """GPU 0 is held by an idle, unpinned model; free memory on both GPUs together holds the
    next model, so it spreads over both and nobody is evicted."""
    gpus = [with_free(80 * GIB, GIB + 0.5 * need), with_free(24 * GIB, 0.7 * need)]
    async with gpu_router(gpus, gpu_memory_reserve_mib=0) as router:
        await load(router, "user.m1", ctx_size=CTX, device=0)  # then GPU 0 has 0.5 need
        await load(router, "user.m2", ctx_size=CTX)
        assert router.get_live("user.m2").placement.gpus == (0, 1)
        assert ready_pid(router, "user.m1") and not events(router, "evict")


async def test_gpu_auto_evicts_where_free_memory_holds_it_nowhere(gpu_router, need):
    """Free memory on all GPUs together is too little: the GPU where evicting idle models
    makes room takes it, and they are evicted (reason ``fit``)."""
    gpus = [with_free(80 * GIB, GIB + 0.3 * need), with_free(24 * GIB, 0.5 * need)]
    async with gpu_router(gpus, gpu_memory_reserve_mib=0) as router:
        await load(router, "user.m1", ctx_size=CTX, device=0)  # then GPU 0 has 0.3 need
        await load(router, "user.m2", ctx_size=CTX)
        assert router.get_live("user.m1") is None
        assert router.get_live("user.m2").placement.gpus == (0,)
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.m1", "fit")]


async def test_gpu_spread_refused_by_pins_gives_every_devices_figures(gpu_router, need):
    """A pinned model holds GPU 0: a model that fits on no GPU, nor on both together, is
    refused (409) with the figures of both devices, and nothing is evicted."""
    gpus = [with_free(80 * GIB, GIB + 0.5 * need), with_free(24 * GIB, 0.3 * need)]
    async with gpu_router(gpus, gpu_memory_reserve_mib=0) as router:
        await load(router, "user.m1", ctx_size=CTX, device=0, pinned=True)
        with pytest.raises(InsufficientMemoryError) as info:
            await load(router, "user.m2", ctx_size=CTX)
        body = info.value.to_body()["error"]
        devices = {d["gpu"]: d for d in body["devices"]}
        assert set(devices) == {0, 1}
        assert devices[0]["pinned_bytes"] == PER_BACKEND and devices[1]["pinned_bytes"] == 0
        for d in devices.values():
            assert d["needed_bytes"] > d["free_bytes"] and d["fits"] is False
            assert set(d) >= {"device", "uuid", "needed_bytes", "free_bytes", "pinned_bytes"}
        assert sum(d["needed_bytes"] for d in devices.values()) == pytest.approx(need, abs=2)
        assert (body["needed_bytes"], body["free_bytes"]) == (
            devices[0]["needed_bytes"], devices[0]["free_bytes"])
        assert ready_pid(router, "user.m1") and router.get_live("user.m2") is None
        assert not events(router, "evict")


async def test_gpu_explicit_split_that_fits_only_some_gpus_is_refused(gpu_router, need):
    """``device: [0, 1]`` splits by total memory (80 and 24 GiB); GPU 1's share does not fit
    its free memory although GPU 0 has plenty: 409 naming GPU 1, with both devices."""
    gpus = [with_free(80 * GIB, 10 * GIB), with_free(24 * GIB, 0.05 * need)]
    async with gpu_router(gpus, gpu_memory_reserve_mib=0) as router:
        with pytest.raises(InsufficientMemoryError) as info:
            await load(router, "user.m1", ctx_size=CTX, device=[0, 1])
        body = info.value.to_body()["error"]
        assert "GPU 1" in body["message"] and body["device"] == "GPU 1"
        figures = [(d["gpu"], d["fits"]) for d in body["devices"]]
        assert figures == [(0, True), (1, False)]
        share = body["devices"][1]["needed_bytes"] / need
        assert share == pytest.approx(24 / (24 + 80), abs=0.01)
        assert router.get_live("user.m1") is None


async def test_gpu_engine_without_nvml_is_placed_on_the_devices_it_listed(gpu_router):
    """A ROCm build on a machine NVML knows nothing about: the router places the model on the
    device the engine listed with the most free memory, under the engine's name for it."""
    async with gpu_router([], build="rocm") as router:
        await load(router, "user.m1", ctx_size=CTX)
        argv = argv_of(router, "user.m1")
        assert argv[argv.index("--device") + 1] == "ROCm0"
        assert argv[argv.index("--n-gpu-layers") + 1] == "999"
        m = router.get_live("user.m1")
        assert m.placement.to_json() == {"device": [0], "gpu_uuids": ["ROCm0"],
                                         "gpu_layers": "all"}
        health = health_view(router, await router.memory.sample())
        assert health["engine"]["backends"] == ["ROCm", "CPU"]
        assert [d["name"] for d in health["engine"]["devices"]] == ["ROCm0", "ROCm1"]


async def test_gpu_engine_that_sees_no_device_runs_models_on_the_cpu(gpu_router):
    """A CPU build with NVML reporting GPUs: nothing is offloaded (no --device)."""
    async with gpu_router([(80 * GIB, 20 * GIB)], build="cpu") as router:
        await load(router, "user.m1", ctx_size=CTX)
        argv = argv_of(router, "user.m1")
        assert "--device" not in argv and "--n-gpu-layers" not in argv
        assert router.get_live("user.m1").placement.on_cpu


async def test_gpu_without_nvml_counts_our_models_against_the_engines_figures(gpu_router, need):
    """The engine's free memory was taken at the probe, before any model: the models placed
    since count against it, so a second one that does not fit beside the first evicts it."""
    room = 1.5 * need  # on ROCm0 after the reserve; ROCm1 has none
    reserve = (196288 * MIB - room) / MIB
    async with gpu_router([], build="rocm", gpu_memory_reserve_mib=reserve) as router:
        await load(router, "user.m1", ctx_size=CTX)
        await load(router, "user.m2", ctx_size=CTX)
        assert router.get_live("user.m1") is None
        assert router.get_live("user.m2").placement.uuids == ("ROCm0",)
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.m1", "fit")]
