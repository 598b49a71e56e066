"""Models on GPUs, without a GPU: fake NVML with several devices and fake backends.

The fake NVML counts 1 GiB on a GPU for every running fake backend whose command line puts it
there (``--device CUDAi``), in its used memory and, when asked to, in its per-process lists (in
containers NVML often lists no processes). The engine is told it can offload. What is checked:
placement and its flags, ``/health``'s per-device figures and their sources, admission by fit
on one GPU (with a pinned model: 409), and pressure on one GPU evicting only models there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from lemonade_jupyter.core.catalog import Catalog
from lemonade_jupyter.core.options import parse_load_options
from lemonade_jupyter.core.router import Router
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import InsufficientMemoryError, InvalidRequestError
from lemonade_jupyter.server.views import health_view

from tests.eviction.test_nvml import FakeNvml, proc

from .conftest import events, ready_pid

GIB = 1024 * 1024 * 1024
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
def gpu_router(catalog: Catalog, data_dir: Path, tmp_path: Path, fake_llama_server_path: str):
    @contextlib.asynccontextmanager
    async def factory(gpus: list[tuple[int, int]], *, lists: bool = True,
                      **settings: Any) -> AsyncIterator[Router]:
        router = Router(catalog, RouterSettings(), llama_server_path=fake_llama_server_path,
                        data_dir=data_dir, log_dir=tmp_path / "logs",
                        nvml=GpuBox(gpus, lists=lists))
        router.launcher.offloads = lambda: True  # type: ignore[method-assign]
        router.replace_settings(**{"stop_grace_s": 1.0, "max_loaded_models": -1, **settings})
        try:
            await router.start()
            yield router
        finally:
            await router.stop()

    return factory


async def load(router: Router, name: str, **body: Any):
    options, given = parse_load_options(body)
    return await router.load(name, options=options, given=given)


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
