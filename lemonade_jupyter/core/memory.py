"""The memory monitor: GPU memory from NVML when there is a GPU, else system memory.

One component that the router, the eviction engine, ``/health``, ``/metrics`` and the dashboard
all read from. A sample is taken in a worker thread (NVML and psutil calls block) and then
applied on the loop. Sampling runs in the background only while someone needs it (auto-evict on,
or a client watching); otherwise a reader asks for a fresh sample on demand.

NVML can be missing (no ``pynvml``), have no driver, or refuse us (containers): every
``NVMLError`` and ``ImportError`` falls back to psutil. Per-process GPU memory may be reported as
None by the driver; that is "unknown", never 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceMemory:
    """One memory device: a GPU (by UUID) or the machine's RAM."""

    name: str
    total: int
    used: int
    uuid: str | None = None

    @property
    def used_pct(self) -> float:
        return self.used / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "total": self.total, "used": self.used}
        if self.uuid:
            data["uuid"] = self.uuid
        return data


@dataclass(frozen=True)
class MemorySample:
    """A snapshot: devices, and memory per backend pid (None = unknown)."""

    source: str
    devices: tuple[DeviceMemory, ...]
    per_pid: dict[int, int | None] = field(default_factory=dict)
    device_of_pid: dict[int, str] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    #: GPU memory per pid and device UUID, as NVML's process lists give it (None: unknown).
    gpu_per_pid: dict[int, dict[str, int | None]] = field(default_factory=dict)
    #: Resident memory per pid (the process's share of RAM).
    rss_per_pid: dict[int, int | None] = field(default_factory=dict)
    #: System RAM, also when the devices are GPUs (models on the CPU count against it).
    ram: DeviceMemory | None = None

    def gpus(self) -> tuple[DeviceMemory, ...]:
        """The GPU devices, in NVML's (PCI bus) order: index i is GPU i."""
        return tuple(d for d in self.devices if d.uuid)

    def device(self, key: str) -> DeviceMemory | None:
        """A device by key: a GPU's UUID, or ``"cpu"`` for the system RAM."""
        if key == "cpu":
            return self.ram or next((d for d in self.devices if not d.uuid), None)
        return next((d for d in self.devices if d.uuid == key), None)

    def pressure_by_device(self) -> dict[str, float]:
        """Used fraction per device key (GPU UUIDs, and ``"cpu"`` for RAM)."""
        out = {d.uuid: d.used_pct for d in self.gpus() if d.uuid}
        ram = self.device("cpu")
        if ram is not None:
            out["cpu"] = ram.used_pct
        return out

    @property
    def pressure(self) -> float:
        """The highest used fraction of any device (what the eviction engine compares)."""
        return max((d.used_pct for d in self.devices), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "devices": [d.to_json() for d in self.devices]}


def _process_rss(pid: int) -> int | None:
    """Resident memory of a backend process.

    Only the process itself: llama-server does not fork, and walking children with psutil
    scans all of /proc once per backend (64 ms for 50 backends per sample; benchmarks §5).
    """
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class NvmlReader:
    """Reads GPU devices and per-process GPU memory through ``pynvml`` (nvidia-ml-py).

    ``nvml`` is injectable so tests can hand in a fake module with the same surface.
    """

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []

    @classmethod
    def open(cls, nvml: Any | None = None) -> NvmlReader | None:
        """Initialise NVML; None when there is no usable GPU (the psutil path takes over)."""
        initialised = False
        try:
            if nvml is None:
                import pynvml as nvml  # nvidia-ml-py
            nvml.nvmlInit()
            initialised = True
            count = nvml.nvmlDeviceGetCount()
            if count < 1:
                nvml.nvmlShutdown()
                return None
            reader = cls(nvml)
            reader._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            return reader
        except ImportError:
            return None
        except Exception as exc:  # every NVMLError subclass, whatever the driver says
            if _is_nvml_error(exc, nvml):
                log.info("NVML unavailable (%s); using system memory", exc)
                if initialised:  # NVML counts inits: give ours back
                    cls(nvml).close()
                return None
            raise

    def sample(self, pids: Iterable[int]) -> MemorySample:
        nvml = self._nvml
        wanted = set(pids)
        devices = []
        per_pid: dict[int, int | None] = {}
        device_of: dict[int, str] = {}
        gpu_per_pid: dict[int, dict[str, int | None]] = {}
        for handle in self._handles:
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            devices.append(DeviceMemory(name, int(info.total), int(info.used), uuid))
            procs: list[Any] = []
            for getter in ("nvmlDeviceGetComputeRunningProcesses",
                           "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    procs += list(getattr(nvml, getter)(handle))
                except Exception as exc:
                    if not _is_nvml_error(exc, nvml):
                        raise
            # A process with compute and graphics contexts is listed twice with the same
            # figure: take it once per device, then add up its devices.
            on_device: dict[int, int | None] = {}
            for proc in procs:
                if proc.pid not in wanted:
                    continue
                used = getattr(proc, "usedGpuMemory", None)
                # None (or NVML's "not available" sentinel) means unknown, not zero.
                value = int(used) if used is not None and used < (1 << 63) else None
                prev = on_device.get(proc.pid)
                on_device[proc.pid] = value if prev is None else max(prev, value or 0)
            for pid, value in on_device.items():
                prev = per_pid.get(pid)
                per_pid[pid] = value if prev is None else prev + (value or 0)
                device_of.setdefault(pid, uuid)
                gpu_per_pid.setdefault(pid, {})[uuid] = value
        rss = {pid: _process_rss(pid) for pid in wanted}
        # Children we asked about that hold no GPU memory: fall back to RSS (CPU backends).
        for pid in wanted - per_pid.keys():
            per_pid[pid] = rss[pid]
        return MemorySample("nvml", tuple(devices), per_pid, device_of,
                            gpu_per_pid=gpu_per_pid, rss_per_pid=rss, ram=_ram())

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:
            if not _is_nvml_error(exc, self._nvml):
                raise


def _is_nvml_error(exc: BaseException, nvml: Any) -> bool:
    error_cls = getattr(nvml, "NVMLError", None)
    return isinstance(error_cls, type) and isinstance(exc, error_cls)


def _ram() -> DeviceMemory:
    vm = psutil.virtual_memory()
    return DeviceMemory("system", int(vm.total), int(vm.total - vm.available))


def system_sample(pids: Iterable[int]) -> MemorySample:
    """System RAM as the one device, and each backend's RSS."""
    ram = _ram()
    per_pid = {pid: _process_rss(pid) for pid in pids}
    return MemorySample("system", (ram,), per_pid, rss_per_pid=dict(per_pid), ram=ram)


class MemoryMonitor:
    """Samples memory off the loop and keeps the latest sample and a short history.

    ``pids`` is a callable giving the backend pids to attribute (read on the loop). Samples
    may be asked for concurrently (the engine's loop, ``/health``, a downsize); the blocking part
    runs one at a time under a thread lock (never held across an await).
    """

    def __init__(
        self,
        pids: Callable[[], list[int]],
        *,
        nvml: Any | None = None,
        use_nvml: bool = True,
        history: int = 120,
    ) -> None:
        self._pids = pids
        self._nvml_module = nvml
        self._use_nvml = use_nvml
        self._reader: NvmlReader | None = None
        self._opened = False
        self.latest: MemorySample | None = None
        self.history: list[tuple[float, float]] = []  # (time, pressure)
        self._history_len = history
        self._listeners: list[Callable[[MemorySample], None]] = []
        self._lock = threading.Lock()
        self._last_watch = 0.0

    def note_watcher(self) -> None:
        """A client looked at memory (``/health``, the event stream): keep sampling a while."""
        self._last_watch = time.monotonic()

    def watched_within(self, seconds: float) -> bool:
        return time.monotonic() - self._last_watch < seconds

    def add_listener(self, listener: Callable[[MemorySample], None]) -> None:
        """Called on the loop with every new sample (the router updates per-model memory)."""
        self._listeners.append(listener)

    def _sample_blocking(self, pids: list[int]) -> MemorySample:
        with self._lock:
            if not self._opened:
                self._opened = True
                if self._use_nvml:
                    self._reader = NvmlReader.open(self._nvml_module)
            reader = self._reader
            if reader is not None:
                try:
                    return reader.sample(pids)
                except Exception as exc:
                    if not _is_nvml_error(exc, reader._nvml):
                        raise
                    log.warning("NVML sample failed (%s); falling back to system memory", exc)
                    self._reader = None
                    reader.close()
            return system_sample(pids)

    async def sample(self) -> MemorySample:
        """Take a sample now (in a worker thread) and publish it."""
        pids = self._pids()
        sample = await asyncio.to_thread(self._sample_blocking, pids)
        self.latest = sample
        self.history.append((sample.time, sample.pressure))
        del self.history[: -self._history_len]
        for listener in self._listeners:
            listener(sample)
        return sample

    async def fresh(self, max_age_s: float) -> MemorySample:
        """The latest sample if younger than ``max_age_s`` and covering every backend, else a new one."""
        latest = self.latest
        if (
            latest is not None
            and time.time() - latest.time <= max_age_s
            and set(self._pids()) <= latest.per_pid.keys()
        ):
            return latest
        return await self.sample()

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
