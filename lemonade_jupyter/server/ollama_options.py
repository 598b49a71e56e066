"""Ollama's ``options`` and ``keep_alive``, mapped onto our load options and sampling fields.

Ollama puts everything a request may tune in one ``options`` object: some keys change how the
model is loaded (``num_ctx``, ``num_gpu``), the others how one answer is sampled. Each key we
know is mapped through the allowlist below, onto a load option of ``/load`` (validated by the
same rules, :func:`..core.options.parse_load_options`) or onto a field of llama-server's
OpenAI-compatible request; every other key (``num_thread``, ``mirostat``, ``use_mmap``...) is
refused with a 400 naming it, rather than silently ignored.

``keep_alive`` (seconds, or a Go duration such as ``"5m"``, ``"1h30m"``) maps onto the model's
idle timeout: a positive value turns the eviction engine on for that model and unloads it after
that long idle; a negative one keeps it loaded (no idle eviction); ``0`` unloads it once the
request is answered. A pinned model ignores ``keep_alive``: a pin blocks every automatic unload.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.options import LoadOptions, parse_load_options
from ..errors import InvalidRequestError

#: The longest ``keep_alive`` taken as a timeout (longer ones keep the model loaded).
MAX_KEEP_ALIVE_S = 365 * 24 * 3600.0
#: Most ``stop`` strings a request may give, and their longest length.
MAX_STOPS = 16
MAX_STOP_CHARS = 256

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(r"^-?(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _number(key: str, value: Any, *, integer: bool = False, low: float = -math.inf,
            high: float = math.inf) -> float | int:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise InvalidRequestError(f"Option '{key}' must be {kind} in [{low}, {high}]",
                                  param=f"options.{key}")
    return value


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)):
        raise InvalidRequestError(
            f"Option 'stop' must be a string or a list of at most {MAX_STOPS} strings",
            param="options.stop")
    return stops


def _max_tokens(value: Any) -> int | None:
    n = int(_number("num_predict", value, integer=True, low=-2, high=1 << 20))
    return None if n < 0 else n  # -1 (no limit) and -2 (fill the context): the engine's own


#: Ollama option → (field of llama-server's request, validator).
SAMPLING: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "temperature": ("temperature", lambda v: _number("temperature", v, low=0, high=100)),
    "top_p": ("top_p", lambda v: _number("top_p", v, low=0, high=1)),
    "top_k": ("top_k", lambda v: _number("top_k", v, integer=True, low=0, high=1 << 20)),
    "min_p": ("min_p", lambda v: _number("min_p", v, low=0, high=1)),
    "typical_p": ("typical_p", lambda v: _number("typical_p", v, low=0, high=1)),
    "seed": ("seed", lambda v: _number("seed", v, integer=True, low=-1, high=(1 << 32) - 1)),
    "num_predict": ("max_tokens", _max_tokens),
    "stop": ("stop", _stop),
    "repeat_penalty": ("repeat_penalty", lambda v: _number("repeat_penalty", v, low=0,
                                                             high=100)),
    "repeat_last_n": ("repeat_last_n", lambda v: _number("repeat_last_n", v, integer=True,
                                                           low=-1, high=1 << 20)),
    "presence_penalty": ("presence_penalty", lambda v: _number("presence_penalty", v,
                                                                 low=-100, high=100)),
    "frequency_penalty": ("frequency_penalty", lambda v: _number("frequency_penalty", v,
                                                                   low=-100, high=100)),
}

#: Ollama option → our load option (validated by ``parse_load_options``).
LOADING: dict[str, str] = {"num_ctx": "ctx_size", "num_gpu": "gpu_layers"}


@dataclass
class OllamaOptions:
    """What one request's ``options`` and ``keep_alive`` ask for."""

    #: Fields to add to llama-server's request.
    sampling: dict[str, Any] = field(default_factory=dict)
    #: Load options and which of them were given (empty: the model as it is loaded).
    load: LoadOptions = field(default_factory=LoadOptions)
    given: frozenset[str] = frozenset()
    #: Unload the model once the request is answered (``keep_alive: 0``).
    unload_after: bool = False


def parse_keep_alive(value: Any) -> float | None:
    """Seconds from ``keep_alive`` (a number of seconds or a Go duration); None: absent.

    Raises InvalidRequestError for anything else."""
    if value is None:
        return None
    if isinstance(value, str) and _DURATION.match(value.strip()):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        return sign * sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise InvalidRequestError(
        "Parameter 'keep_alive' must be a number of seconds or a duration such as \"5m\"",
        param="keep_alive")


def parse_options(options: Any, keep_alive: Any, *, sampling: bool = True) -> OllamaOptions:
    """Validate ``options`` and ``keep_alive`` of an Ollama request (400 on anything unknown).

    ``sampling`` False (embeddings): sampling options are accepted and have no effect, as in
    Ollama."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidRequestError("Parameter 'options' must be an object", param="options")
    out = OllamaOptions()
    load_body: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in SAMPLING:
            target, check = SAMPLING[key]
            checked = check(value)
            if sampling and checked is not None:
                out.sampling[target] = checked
        elif key in LOADING:
            load_body[LOADING[key]] = value
        else:
            raise InvalidRequestError(
                f"Option '{key}' is not supported here; supported options: "
                f"{', '.join(sorted([*SAMPLING, *LOADING]))}", param=f"options.{key}")
    seconds = parse_keep_alive(keep_alive)
    if seconds is not None:
        if seconds == 0:
            out.unload_after = True
        elif seconds < 0 or seconds > MAX_KEEP_ALIVE_S:
            load_body["auto_evict"] = False
        else:
            load_body.update(auto_evict=True, evict_idle_timeout=seconds,
                             downsize_idle_timeout=seconds)
    try:
        out.load, out.given = parse_load_options(load_body)
    except InvalidRequestError as exc:
        back = {v: k for k, v in LOADING.items()}
        name = back.get(exc.param or "", exc.param)
        raise InvalidRequestError(f"Option '{name}': {exc.message}",
                                  param=f"options.{name}") from None
    return out
