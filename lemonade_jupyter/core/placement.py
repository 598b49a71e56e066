"""Where a model runs: the CPU, one GPU, or several, and with how many layers offloaded.

Pure functions over the GPUs a memory sample reports (NVML's order, which is PCI bus order;
backends get ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers them the same way):

* ``device: "cpu"``, ``gpu_layers: 0``, an engine that cannot offload, or no GPU → the CPU.
* ``device: i`` or ``[i, j]`` → those GPUs (a list splits the model's layers across them);
  an index that does not exist is a 400 that changes nothing.
* ``device: "auto"`` (the default) → the GPU with the most free memory that fits the model's
  estimate (or, when none fits, the one with the most free memory: admission by fit then makes
  room there or answers 409).

``gpu_layers`` defaults to every layer; llama-server takes a number larger than the layer
count as "all".
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequestError
from .memory import DeviceMemory
from .options import LoadOptions

#: More layers than any model has: llama-server offloads every layer.
ALL_LAYERS = 999
CPU = "cpu"


@dataclass(frozen=True)
class Placement:
    """The devices of one backend: GPU indices and UUIDs (none: the CPU) and offloaded layers."""

    gpus: tuple[int, ...] = ()
    uuids: tuple[str, ...] = ()
    gpu_layers: int = 0

    @property
    def on_cpu(self) -> bool:
        return not self.gpus or self.gpu_layers == 0

    @property
    def device_keys(self) -> tuple[str, ...]:
        """Where its memory counts: GPU UUIDs, or ``"cpu"``."""
        return (CPU,) if self.on_cpu else self.uuids

    def args(self, offload: bool) -> list[str]:
        """llama-server flags for this placement (none for an engine that cannot offload)."""
        if not offload:
            return []
        if self.on_cpu:
            return ["--n-gpu-layers", "0"]
        devices = ",".join(f"CUDA{i}" for i in self.gpus)
        split = "none" if len(self.gpus) == 1 else "layer"
        return ["--n-gpu-layers", str(self.gpu_layers), "--device", devices,
                "--split-mode", split]

    def to_json(self) -> dict[str, object]:
        if self.on_cpu:
            return {"device": CPU, "gpu_layers": 0}
        return {"device": list(self.gpus), "gpu_uuids": list(self.uuids),
                "gpu_layers": "all" if self.gpu_layers == ALL_LAYERS else self.gpu_layers}


def choose(options: LoadOptions, gpus: tuple[DeviceMemory, ...], *, offload: bool,
           need_bytes: int | None = None, reserve_bytes: int = 0) -> Placement:
    """The placement of a model with ``options`` over ``gpus`` (NVML order).

    Raises InvalidRequestError for a GPU index that does not exist.
    """
    if isinstance(options.device, tuple):
        missing = [i for i in options.device if i >= len(gpus)]
        if missing:
            have = ", ".join(str(i) for i in range(len(gpus))) or "none"
            raise InvalidRequestError(
                f"Parameter 'device': no GPU {missing[0]} on this machine (GPUs: {have})",
                param="device")
    layers = ALL_LAYERS if options.gpu_layers is None else options.gpu_layers
    if options.device == CPU or layers == 0 or not offload or not gpus:
        return Placement()
    if isinstance(options.device, tuple):
        chosen = options.device
    else:
        chosen = (_auto(gpus, need_bytes, reserve_bytes),)
    return Placement(chosen, tuple(gpus[i].uuid or "" for i in chosen), layers)


def _auto(gpus: tuple[DeviceMemory, ...], need: int | None, reserve: int) -> int:
    """The GPU with the most free memory among those that fit, else the one with the most."""
    free = [(d.total - d.used - reserve, i) for i, d in enumerate(gpus)]
    fitting = [f for f in free if need is None or f[0] >= need]
    return max(fitting or free)[1]
