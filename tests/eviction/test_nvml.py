"""The memory monitor's NVML path against a fake ``pynvml``, and once against a real GPU.

The fake has the surface of nvidia-ml-py that :mod:`lemonade_jupyter.core.memory` uses, with an
``NVMLError`` class and the subclasses the driver raises. Every NVML failure (no library, no
driver, no permission, a GPU lost mid-run) and an ``ImportError`` must fall back to system
memory; a process figure of None (or NVML's "not available" sentinel) is unknown, never 0.
"""

from __future__ import annotations

import asyncio
import os
import sys
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from lemonade_jupyter.core.memory import MemoryMonitor, NvmlReader

from tests.helpers.polling import wait_for
from tests.helpers.processes import alive

MB = 1024 * 1024
GB = 1024 * MB
NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF  # NVML_VALUE_NOT_AVAILABLE_ulonglong


class NVMLError(Exception):
    """Like pynvml's: one base class, a subclass per return code."""


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's names
    """NVML error: no libnvidia-ml."""


class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
    """NVML error: no driver."""


class NVMLError_NoPermission(NVMLError):  # noqa: N801
    """NVML error: not allowed (containers)."""


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    """NVML error: the GPU fell off the bus."""


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    """NVML error: query not supported."""


def proc(pid: int, used: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


class FakeNvml:
    """A stand-in for the ``pynvml`` module. ``fail[name]`` makes that call raise."""

    NVMLError = NVMLError

    def __init__(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices
        self.fail: dict[str, BaseException] = {}
        self.inits = 0
        self.shutdowns = 0
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self._call("nvmlInit")
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._call("nvmlShutdown")
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._call("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:  # noqa: N802
        self._call("nvmlDeviceGetHandleByIndex")
        return ("handle", index)

    def _device(self, handle: tuple[str, int]) -> dict[str, Any]:
        return self.devices[handle[1]]

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        self._call("nvmlDeviceGetMemoryInfo")
        d = self._device(handle)
        return SimpleNamespace(total=d["total"], used=d["used"], free=d["total"] - d["used"])

    def nvmlDeviceGetName(self, handle):  # noqa: N802
        self._call("nvmlDeviceGetName")
        return self._device(handle)["name"]

    def nvmlDeviceGetUUID(self, handle):  # noqa: N802
        self._call("nvmlDeviceGetUUID")
        return self._device(handle)["uuid"]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):  # noqa: N802
        self._call("nvmlDeviceGetComputeRunningProcesses")
        return list(self._device(handle).get("compute", []))

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):  # noqa: N802
        self._call("nvmlDeviceGetGraphicsRunningProcesses")
        return list(self._device(handle).get("graphics", []))


def two_gpus() -> FakeNvml:
    return FakeNvml([
        {"name": b"NVIDIA H100 80GB HBM3", "uuid": b"GPU-aaaa", "total": 80 * GB,
         "used": 20 * GB,
         "compute": [proc(1001, 500 * MB), proc(1002, None), proc(1004, 300 * MB),
                     proc(1005, 100 * MB), proc(4242, 9 * GB)],
         "graphics": [proc(1003, NOT_AVAILABLE), proc(1004, 300 * MB)]},
        {"name": "NVIDIA L4", "uuid": "GPU-bbbb", "total": 24 * GB, "used": 18 * GB,
         "compute": [proc(1005, 200 * MB)]},
    ])


def sample(monitor: MemoryMonitor):
    return asyncio.run(monitor.sample())


def test_devices_by_uuid_and_memory_by_pid():
    nvml = two_gpus()
    me = os.getpid()  # a backend with no GPU memory (a CPU backend): its RSS
    reader = NvmlReader.open(nvml)
    assert reader is not None and nvml.inits == 1
    s = reader.sample([1001, 1002, 1003, 1004, 1005, me])

    assert s.source == "nvml"
    assert [(d.uuid, d.name, d.total, d.used) for d in s.devices] == [
        ("GPU-aaaa", "NVIDIA H100 80GB HBM3", 80 * GB, 20 * GB),
        ("GPU-bbbb", "NVIDIA L4", 24 * GB, 18 * GB),
    ]
    assert s.to_json()["devices"][0] == {
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa", "total": 80 * GB, "used": 20 * GB}
    assert s.pressure == pytest.approx(18 / 24)  # the fullest device
    assert s.per_pid[1001] == 500 * MB
    assert 1002 in s.per_pid and s.per_pid[1002] is None  # unknown, not 0
    assert 1003 in s.per_pid and s.per_pid[1003] is None  # NVML's "not available"
    assert s.per_pid[1004] == 300 * MB  # listed as compute and graphics: counted once
    assert s.per_pid[1005] == 300 * MB  # on two devices: added up
    assert 4242 not in s.per_pid  # not one of ours
    assert s.per_pid[me] > 10 * MB  # RSS
    assert s.device_of_pid == {1001: "GPU-aaaa", 1002: "GPU-aaaa", 1003: "GPU-aaaa",
                               1004: "GPU-aaaa", 1005: "GPU-aaaa"}
    reader.close()
    assert nvml.shutdowns == 1


def test_a_process_list_nvml_refuses_is_skipped_not_fatal():
    nvml = two_gpus()
    nvml.fail["nvmlDeviceGetComputeRunningProcesses"] = NVMLError_NoPermission("no perm")
    monitor = MemoryMonitor(lambda: [1003, 1004], nvml=nvml)
    s = sample(monitor)
    assert s.source == "nvml" and len(s.devices) == 2
    assert s.per_pid[1004] == 300 * MB  # still found in the graphics list
    assert s.per_pid[1003] is None


def test_no_gpu_means_system_memory():
    nvml = FakeNvml([])
    assert NvmlReader.open(nvml) is None
    assert nvml.inits == nvml.shutdowns == 1
    assert sample(MemoryMonitor(lambda: [], nvml=nvml)).source == "system"


@pytest.mark.parametrize("call", ["nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex"])
@pytest.mark.parametrize("error", [
    NVMLError("unknown"), NVMLError_LibraryNotFound("NVML Shared Library Not Found"),
    NVMLError_DriverNotLoaded("Driver Not Loaded"), NVMLError_NoPermission("Insufficient "
                                                                           "Permissions"),
], ids=lambda e: type(e).__name__)
def test_every_nvml_error_at_open_falls_back_to_system_memory(call, error):
    nvml = two_gpus()
    nvml.fail[call] = error
    me = os.getpid()
    monitor = MemoryMonitor(lambda: [me], nvml=nvml)
    s = sample(monitor)
    assert s.source == "system"
    [device] = s.devices
    vm = psutil.virtual_memory()
    assert device.name == "system" and device.uuid is None and device.total == vm.total
    assert 0 < device.used <= device.total
    assert s.per_pid[me] > 10 * MB  # our RSS
    assert s.device_of_pid == {}
    assert nvml.inits == nvml.shutdowns  # what was initialised is shut down again
    # It does not retry NVML on every sample.
    calls = len(nvml.calls)
    assert sample(monitor).source == "system" and len(nvml.calls) == calls


@pytest.mark.parametrize("call", ["nvmlDeviceGetMemoryInfo", "nvmlDeviceGetName",
                                  "nvmlDeviceGetUUID"])
def test_an_nvml_error_during_a_sample_falls_back_to_system_memory(call):
    nvml = two_gpus()
    monitor = MemoryMonitor(lambda: [1001], nvml=nvml)
    assert sample(monitor).source == "nvml"
    nvml.fail[call] = NVMLError_GpuIsLost("GPU is lost")
    s = sample(monitor)
    assert s.source == "system" and [d.name for d in s.devices] == ["system"]
    assert set(s.per_pid) == {1001}  # its RSS, if such a process exists here
    assert monitor.latest is s
    assert nvml.shutdowns == nvml.inits == 1
    assert sample(monitor).source == "system"


def test_an_error_that_is_not_nvml_is_not_hidden():
    nvml = two_gpus()
    nvml.fail["nvmlDeviceGetMemoryInfo"] = KeyError("a bug, not a missing GPU")
    monitor = MemoryMonitor(lambda: [], nvml=nvml)
    with pytest.raises(KeyError):
        sample(monitor)


def test_without_pynvml_it_is_system_memory(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` an ImportError
    assert NvmlReader.open() is None
    s = sample(MemoryMonitor(lambda: [os.getpid()]))
    assert s.source == "system" and s.per_pid[os.getpid()] > 0


def test_use_nvml_false_never_touches_nvml():
    nvml = two_gpus()
    assert sample(MemoryMonitor(lambda: [], nvml=nvml, use_nvml=False)).source == "system"
    assert nvml.calls == []


def test_the_router_reads_gpu_memory_through_nvml_end_to_end(monkeypatch, make_lemonade):
    """With a fake ``pynvml`` importable: /health and /metrics show the GPU by UUID, each model's
    GPU memory by its backend pid (None stays None), the engine's own loop evicts for GPU
    pressure, and a GPU lost mid-run falls back to system memory without an error."""
    nvml = FakeNvml([{"name": b"NVIDIA H100 80GB HBM3", "uuid": b"GPU-1234", "total": 80 * GB,
                      "used": 40 * GB}])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    lemon = make_lemonade(memory_sample_interval_s=0.1, eviction_interval_s=0.1)
    lemon.load("user.m1", pinned=True)
    lemon.load("user.m2")
    pids = {name: m["pid"] for name, m in lemon.models().items()}
    nvml.devices[0]["compute"] = [proc(pids["user.m1"], 1234 * MB), proc(pids["user.m2"], None)]

    # /health shows a sample up to 1 s old: wait for one taken after the change.
    health = wait_for(
        lambda: (h := lemon.health())["all_models_loaded"][0]["memory_bytes"] == 1234 * MB and h,
        what="a sample with m1's GPU memory")
    assert health["memory"] == {"source": "nvml", "devices": [
        {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1234", "total": 80 * GB,
         "used": 40 * GB}]}
    models = {m["model_name"]: m for m in health["all_models_loaded"]}
    assert models["user.m1"]["memory_bytes"] == 1234 * MB
    assert models["user.m1"]["device"] == "GPU-1234"
    assert models["user.m2"]["memory_bytes"] is None  # unknown, not 0
    text = lemon.metrics()
    assert 'lemonade_device_memory_total_bytes{device="GPU-1234",source="nvml"}' in text
    assert 'lemonade_model_memory_bytes{model="user.m1"} 1.293942784e+09' in text

    # The GPU fills up: the engine's loop evicts the unpinned model for pressure by itself.
    nvml.devices[0]["used"] = int(0.97 * 80 * GB)
    lemon.set(auto_evict=True)
    wait_for(lambda: lemon.model("user.m2") is None, what="a pressure eviction of m2")
    [event] = lemon.events("evict", "user.m2")
    assert event.reason == "pressure"
    wait_for(lambda: not alive(pids["user.m2"]), what="m2's backend to end")
    assert lemon.model("user.m1")["pid"] == pids["user.m1"]

    # The GPU is lost mid-run: system memory from then on, and everything still answers.
    lemon.set(auto_evict=False)
    nvml.fail["nvmlDeviceGetMemoryInfo"] = NVMLError_GpuIsLost("GPU is lost")
    health = wait_for(lambda: (h := lemon.health())["memory"]["source"] == "system" and h,
                        what="the fallback to system memory")
    [entry] = health["all_models_loaded"]
    assert entry["memory_bytes"] > 10 * MB and entry["device"] == "cpu"
    assert nvml.shutdowns == nvml.inits == 1


@pytest.mark.gpu
def test_real_nvml_reports_the_gpus():
    reader = NvmlReader.open()
    if reader is None:
        pytest.skip("no NVIDIA GPU/driver (NVML unavailable)")
    try:
        s = reader.sample([os.getpid()])
    finally:
        reader.close()
    print("\n" + "\n".join(f"{d.uuid} {d.name}: {d.used / GB:.2f} / {d.total / GB:.2f} GiB"
                           for d in s.devices))
    assert s.source == "nvml" and s.devices
    for d in s.devices:
        assert d.uuid and d.uuid.startswith(("GPU-", "MIG-")), d
        assert d.name and d.total > 0 and 0 <= d.used <= d.total
    assert len({d.uuid for d in s.devices}) == len(s.devices)
    assert 0.0 <= s.pressure <= 1.0
    assert s.per_pid[os.getpid()] is None or s.per_pid[os.getpid()] > 0
