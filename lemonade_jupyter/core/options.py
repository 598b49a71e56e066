"""Per-model load options, parsed and validated once at the API boundary.

Options fall in two groups: *process* options change the backend's command line (a change
reloads the model, keeping its pin) and *eviction* options only change how the eviction engine
treats the model (a change applies in place).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import InvalidRequestError
from .engine_flags import STRICT, ArgsPolicy, check_llamacpp_args
from .settings import check_value
from .validation import check_number

@dataclass(frozen=True)
class LoadOptions:
    """What a ``/load`` may set for one model; ``None`` means "the default"."""

    #: Tokens of context; None: ``auto``, the trained context capped by what fits
    #: (:mod:`.context_size`). ``"auto"`` and -1 parse to None.
    ctx_size: int | None = None
    llamacpp_args: str = ""
    auto_evict: bool | None = None
    downsize_idle_timeout: float | None = None
    evict_idle_timeout: float | None = None
    evict_weight_factor: float | None = None
    #: Layers offloaded to the GPU; None: every layer when the engine offloads and a GPU exists.
    gpu_layers: int | None = None
    #: None (auto: the GPU with the most free memory that fits), "cpu", or GPU indices.
    device: str | tuple[int, ...] | None = None
    #: llama-server's parallel slots (``--parallel``); None: the engine's default (it says
    #: how many in ``/props``). The router lets this many requests run at once.
    parallel: int | None = None
    #: Requests that may wait for a free slot before a 429; None: the ``max_queue`` setting.
    max_queue: int | None = None

    PROCESS_KEYS = ("ctx_size", "llamacpp_args", "gpu_layers", "device", "parallel")

    def process_key(self) -> tuple[Any, ...]:
        """The part that, when it changes, requires a new backend process."""
        return tuple(getattr(self, k) for k in self.PROCESS_KEYS)

    def merged(self, other: LoadOptions, given: frozenset[str]) -> LoadOptions:
        """``self`` with the fields named in ``given`` taken from ``other``."""
        return replace(self, **{k: getattr(other, k) for k in given})

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v not in (None, "")}
        if isinstance(self.device, tuple):
            data["device"] = self.device[0] if len(self.device) == 1 else list(self.device)
        return data


#: Bounds of ``ctx_size`` (tokens).
MIN_CTX_SIZE = 64
MAX_CTX_SIZE = 1 << 20
#: ``ctx_size: "auto"`` (the default): the context the model was trained with (its GGUF
#: header), capped by what fits (:mod:`.context_size`). ``-1`` is the same, kept for clients
#: that send a number; both are stored as None, the default, so that asking for ``auto``
#: explicitly does not reload a model that runs with it.
AUTO_CTX_LABEL = "auto"
AUTO_CTX_SIZE = -1
#: More layers than any model has: "all of them".
MAX_GPU_LAYERS = 10_000
MAX_GPUS = 64
#: Bound of ``parallel``: llama-server splits its context between the slots.
MAX_PARALLEL = 256


def parse_load_options(body: Mapping[str, Any], *, args_policy: ArgsPolicy = STRICT,
                       ) -> tuple[LoadOptions, frozenset[str]]:
    """Validate the option keys of a ``/load`` body; return the options and which were given.

    Keys that are not options (``model_name``, ``model``, ``pinned``) are ignored here; an
    unknown key is a 400 so that typos do not silently do nothing. ``llamacpp_args`` is
    checked against the allowlist of :mod:`.engine_flags` under ``args_policy`` (strict
    unless the caller says otherwise).
    """
    known = {f for f in LoadOptions.__dataclass_fields__}
    ignored = {"model_name", "model", "pinned"}
    given: set[str] = set()
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key in ignored:
            continue
        if key not in known:
            raise InvalidRequestError(f"Unknown load option '{key}'", param=key)
        given.add(key)
        if value is None:
            values[key] = "" if key == "llamacpp_args" else None
            continue
        if key == "ctx_size":
            values[key] = _check_ctx_size(value)
        elif key == "llamacpp_args":
            check_llamacpp_args(value, args_policy)
            values[key] = value
        elif key == "gpu_layers":
            values[key] = check_number(key, value, minimum=0, maximum=MAX_GPU_LAYERS,
                                       integer=True)
        elif key == "device":
            values[key] = _check_device(value)
        elif key == "parallel":
            values[key] = check_number(key, value, minimum=1, maximum=MAX_PARALLEL,
                                       integer=True)
        else:
            # The eviction options and max_queue share their rules with the router-wide
            # setting they override for one model.
            values[key] = check_value(key, value)
    return LoadOptions(**values), frozenset(given)


def _check_ctx_size(value: Any) -> int | None:
    """A context length in tokens, or None for ``"auto"`` (or -1): the trained context capped
    by what fits."""
    if value == AUTO_CTX_LABEL or (value == AUTO_CTX_SIZE and isinstance(value, int)
                                   and not isinstance(value, bool)):
        return None
    try:
        return int(check_number("ctx_size", value, minimum=MIN_CTX_SIZE,
                                maximum=MAX_CTX_SIZE, integer=True))
    except InvalidRequestError:
        raise InvalidRequestError(
            f"Parameter 'ctx_size' must be an integer between {MIN_CTX_SIZE} and "
            f"{MAX_CTX_SIZE}, or \"auto\" (also -1) for the context the model was trained "
            "with, capped by what fits", param="ctx_size") from None


def _check_device(value: Any) -> str | tuple[int, ...] | None:
    """``"auto"`` (None), ``"cpu"``, a GPU index, or a list of distinct indices to split over.

    Whether those GPUs exist is checked at load time, against the devices NVML reports."""
    if value == "auto":
        return None
    if value == "cpu":
        return "cpu"
    indices = value if isinstance(value, list) else [value]
    if (not indices or len(indices) > MAX_GPUS
            or any(isinstance(i, bool) or not isinstance(i, int) for i in indices)):
        raise InvalidRequestError(
            "Parameter 'device' must be \"auto\", \"cpu\", a GPU index or a non-empty list "
            "of GPU indices", param="device")
    checked = tuple(int(check_number("device", i, minimum=0, maximum=MAX_GPUS - 1,
                                     integer=True)) for i in indices)
    if len(set(checked)) != len(checked):
        raise InvalidRequestError("Parameter 'device' lists a GPU twice", param="device")
    return checked
