"""Where a model runs: the CPU, one GPU, or several, and with how many layers offloaded.

Pure functions over the GPUs a memory sample reports (NVML's order, which is PCI bus order;
backends get ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA numbers them the same way), or, on a
machine without NVML (ROCm, Vulkan, Metal), the devices the engine itself listed:

* ``device: "cpu"``, ``gpu_layers: 0``, an engine that cannot offload, or no GPU → the CPU.
* ``device: i`` or ``[i, j]`` → those GPUs; a list splits the model's layers across them in
  proportion to their total memory (``--tensor-split``), so a small GPU gets a small share.
  An index that does not exist is a 400 that changes nothing.
* ``device: "auto"`` (the default) → the GPU with the most free memory when the model's
  estimate fits there; else the fewest GPUs whose free memory (minus the reserve) holds it
  together, largest first, each taking a share in proportion to its free memory. When free
  memory cannot hold it at all, the same choice over the room each GPU could have
  (free memory plus what idle unpinned models there hold), so that admission by fit makes
  room; when even that is too little, every GPU, and the fit refuses (409) with every
  device's figures.

``gpu_layers`` defaults to every layer; llama-server takes a number larger than the layer
count as "all".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidRequestError
from .memory import DeviceMemory
from .options import LoadOptions

#: More layers than any model has: llama-server offloads every layer.
ALL_LAYERS = 999
CPU = "cpu"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Placement:
    """The devices of one backend: GPU indices and UUIDs (none: the CPU), offloaded layers,
    the engine's names for those GPUs (``CUDA0``, ``Vulkan1``...) and, across several GPUs,
    each one's weight in the split (``--tensor-split``)."""

    gpus: tuple[int, ...] = ()
    uuids: tuple[str, ...] = ()
    gpu_layers: int = 0
    names: tuple[str, ...] = ()
    split: tuple[int, ...] = ()

    @property
    def on_cpu(self) -> bool:
        return not self.gpus or self.gpu_layers == 0

    @property
    def device_keys(self) -> tuple[str, ...]:
        """Where its memory counts: GPU UUIDs, or ``"cpu"``."""
        return (CPU,) if self.on_cpu else self.uuids

    def share(self, key: str) -> float:
        """The fraction of the model on device ``key`` (0 where it is not)."""
        keys = self.device_keys
        if key not in keys:
            return 0.0
        if len(self.split) != len(keys) or sum(self.split) <= 0:
            return 1.0 / len(keys)
        return self.split[keys.index(key)] / sum(self.split)

    def args(self, offload: bool, *, tensor_split: bool = True) -> list[str]:
        """llama-server flags for this placement (none for an engine that cannot offload).

        ``--device`` takes the engine's own device names; ``--tensor-split`` gives the
        proportions in the order of ``--device``."""
        if not offload:
            return []
        if self.on_cpu:
            return ["--n-gpu-layers", "0"]
        names = self.names if len(self.names) == len(self.gpus) else tuple(
            f"CUDA{i}" for i in self.gpus)
        split = "none" if len(self.gpus) == 1 else "layer"
        args = ["--n-gpu-layers", str(self.gpu_layers), "--device", ",".join(names),
                "--split-mode", split]
        if tensor_split and len(self.gpus) > 1 and len(self.split) == len(self.gpus):
            args += ["--tensor-split", ",".join(str(w) for w in self.split)]
        return args

    def to_json(self) -> dict[str, object]:
        if self.on_cpu:
            return {"device": CPU, "gpu_layers": 0}
        data: dict[str, object] = {
            "device": list(self.gpus), "gpu_uuids": list(self.uuids),
            "gpu_layers": "all" if self.gpu_layers == ALL_LAYERS else self.gpu_layers}
        if len(self.gpus) > 1 and self.split:
            data["tensor_split"] = list(self.split)
        return data


def choose(options: LoadOptions, gpus: tuple[DeviceMemory, ...], *, offload: bool,
           need_bytes: int | None = None, reserve_bytes: int = 0,
           reclaimable: Sequence[int] = (), names: Sequence[str] = ()) -> Placement:
    """The placement of a model with ``options`` over ``gpus`` (NVML order).

    ``reclaimable[i]``: bytes that evicting idle unpinned models would free on GPU i;
    ``names[i]``: the engine's name for GPU i (default ``CUDA<i>``).
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
        weights = tuple(_mib(gpus[i].total) for i in chosen)
    else:
        free = [d.total - d.used - reserve_bytes for d in gpus]
        extra = list(reclaimable) + [0] * (len(gpus) - len(reclaimable))
        room = [f + r for f, r in zip(free, extra)]
        picked = _fewest(free, need_bytes) or _fewest(room, need_bytes)
        if picked is None:  # nothing holds it: every GPU, and the fit says why not
            picked = tuple(range(len(gpus))), room
        chosen, capacity = picked
        weights = tuple(max(1, _mib(capacity[i])) for i in chosen)
    if len(chosen) == 1:
        weights = ()
    engine_names = tuple(names[i] if i < len(names) else f"CUDA{i}" for i in chosen)
    return Placement(chosen, tuple(gpus[i].uuid or "" for i in chosen), layers,
                     engine_names, weights)


def _fewest(capacity: list[int], need: int | None
            ) -> tuple[tuple[int, ...], list[int]] | None:
    """The GPU with the most ``capacity`` when ``need`` fits there (or is unknown), else the
    fewest GPUs, largest first, whose capacities add up to it (in index order); None when
    all of them together cannot hold it."""
    order = sorted(range(len(capacity)), key=lambda i: (-capacity[i], i))
    if need is None or capacity[order[0]] >= need:
        return (order[0],), capacity
    total = 0
    for count, i in enumerate(order, start=1):
        total += max(capacity[i], 0)
        if total >= need and count > 1:
            return tuple(sorted(order[:count])), capacity
    return None


def _mib(n: int) -> int:
    return max(0, n) // MIB
