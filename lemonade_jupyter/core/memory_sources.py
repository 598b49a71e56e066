"""Per-model memory a user can trust: bytes on each GPU and in RAM, each with its source.

GPU memory of one backend, best source first:

1. ``nvml_process``: NVML's per-process list names the backend's pid on that GPU.
2. ``engine_log``: llama-server's own report of its buffers, logged at load (model, KV cache,
   compute and output buffers per buffer type: ``CUDA0``, ``CUDA_Host``, ``CPU_Mapped``...).
   In containers NVML often lists no processes at all; this still gives each model its figure.
3. ``device_delta``: the change of the GPU's used memory across that model's load.

RAM: the process's resident memory (``process_rss``). A figure that no source has is None
("unknown"), never 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .memory import MemorySample
from .placement import Placement

MIB = 1024 * 1024

#: ``load_tensors:        CUDA0 model buffer size =  1234.56 MiB`` and the KV, compute and
#: output lines of the same shape (llama.cpp prints them per buffer type at load).
_BUFFER_LINE = re.compile(
    r"\b(?P<buffer>[A-Za-z][A-Za-z_]*?\d*(?:_[A-Za-z]+)?)\s+(?:model|KV|compute|output)"
    r"\s+buffer size\s*=\s*(?P<mib>\d+(?:\.\d+)?)\s*MiB"
)
_GPU_BUFFER = re.compile(r"^(?:CUDA|ROCm|Vulkan|SYCL|MTL)(?P<index>\d+)$")

HOST = "host"


def parse_buffer_report(text: str) -> dict[str, int]:
    """Bytes per device from a llama-server load log: ``"gpu0"``, ``"gpu1"``... and ``"host"``.

    Every buffer type that is not a numbered GPU (``CPU``, ``CPU_Mapped``, ``CUDA_Host``,
    ``CPU_REPACK``) is host memory. Lines are summed per device.
    """
    totals: dict[str, float] = {}
    for match in _BUFFER_LINE.finditer(text):
        gpu = _GPU_BUFFER.match(match["buffer"])
        key = f"gpu{gpu['index']}" if gpu else HOST
        totals[key] = totals.get(key, 0.0) + float(match["mib"])
    return {k: round(v * MIB) for k, v in totals.items()}


@dataclass(frozen=True)
class Figure:
    bytes: int | None
    source: str

    def to_json(self) -> dict[str, object]:
        return {"bytes": self.bytes, "source": self.source}


@dataclass(frozen=True)
class ModelMemory:
    """One model's memory: per GPU (by UUID) and in RAM, each with its source."""

    gpu: Mapping[str, Figure] = field(default_factory=dict)
    ram: Figure = Figure(None, "unknown")

    def on(self, device_key: str) -> int | None:
        """Bytes on a device key (a GPU UUID, or ``"cpu"`` for RAM)."""
        figure = self.ram if device_key == "cpu" else self.gpu.get(device_key)
        return figure.bytes if figure is not None else None

    def total_for(self, placement: Placement) -> int | None:
        """What the model holds where it runs: VRAM on its GPUs, else RSS on the CPU."""
        uuids = self.gpu_keys(placement)
        if not uuids:
            return self.ram.bytes
        known = [f.bytes for u in uuids if (f := self.gpu.get(u)) is not None
                 and f.bytes is not None]
        return sum(known) if known else None

    def gpu_keys(self, placement: Placement) -> tuple[str, ...]:
        """The GPUs it holds memory on: its placement's, or those NVML saw it on."""
        return placement.uuids if not placement.on_cpu else tuple(self.gpu)

    def sources(self) -> dict[str, str]:
        out = {uuid: f.source for uuid, f in self.gpu.items()}
        out["cpu"] = self.ram.source
        return out


def attribute(pid: int, placement: Placement, sample: MemorySample,
              engine_report: Mapping[str, int], load_delta: Mapping[str, int]) -> ModelMemory:
    """The memory of the backend ``pid`` with ``placement``, from the best source per device."""
    rss = sample.rss_per_pid.get(pid)
    if rss is None and sample.source == "system":
        rss = sample.per_pid.get(pid)
    ram = Figure(rss, "process_rss") if rss is not None else Figure(None, "unknown")
    gpu: dict[str, Figure] = {}
    if not placement.on_cpu:
        listed = sample.gpu_per_pid.get(pid, {})
        for index, uuid in zip(placement.gpus, placement.uuids):
            if listed.get(uuid) is not None:
                gpu[uuid] = Figure(listed[uuid], "nvml_process")
            elif engine_report.get(f"gpu{index}") is not None:
                gpu[uuid] = Figure(engine_report[f"gpu{index}"], "engine_log")
            elif load_delta.get(uuid) is not None:
                gpu[uuid] = Figure(load_delta[uuid], "device_delta")
            else:
                gpu[uuid] = Figure(None, "unknown")
    # A GPU NVML sees the backend on counts even where the router did not put it (a binary
    # that offloads by itself): a figure that someone measured is one a user can trust.
    for uuid, value in sample.gpu_per_pid.get(pid, {}).items():
        gpu.setdefault(uuid, Figure(value, "nvml_process"))
    return ModelMemory(gpu, ram)
