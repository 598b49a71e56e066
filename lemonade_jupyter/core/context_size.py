"""The context length a backend starts with, and ``ctx_size: -1`` ("as trained") in particular.

``-1`` asks for the context the model was trained with, read from its GGUF header
(``<arch>.context_length``). That can be far more than memory allows (128k tokens of KV cache
for an 8B model is 16 GiB), so where admission by fit checks memory (on a GPU, or under
``memory_budget_mib``), it is capped to the largest context whose estimate fits the room the
model could get: the device's free memory plus what every model that may be evicted for it
holds. The cap is a multiple of :data:`CTX_STEP` (llama.cpp pads its context to 256 cells),
never below :data:`~.options.MIN_CTX_SIZE`; when even that does not fit, the fit check refuses
the load as it refuses any other.

Pure functions over :class:`~.gguf_facts.GgufFacts`; the caller reads the header off the loop.
"""

from __future__ import annotations

from .engines.llamacpp import DEFAULT_CTX_SIZE
from .gguf_facts import GgufFacts
from .options import AUTO_CTX_SIZE, MAX_CTX_SIZE, MIN_CTX_SIZE

#: Granularity of a capped context (llama.cpp rounds its context up to 256 cells).
CTX_STEP = 256


def trained_context(facts: GgufFacts | None) -> int:
    """The context the model was trained with, within our bounds; the default when the
    header does not say (or could not be read)."""
    if facts is None or facts.context_length <= 0:
        return DEFAULT_CTX_SIZE
    return max(MIN_CTX_SIZE, min(facts.context_length, MAX_CTX_SIZE))


def requested_context(option: int | None, facts: GgufFacts | None) -> int:
    """The context a start asks for: the option, the default, or the trained one for -1."""
    if option == AUTO_CTX_SIZE:
        return trained_context(facts)
    return option or DEFAULT_CTX_SIZE


def largest_fitting_context(facts: GgufFacts, room_bytes: int, wanted: int) -> int:
    """The largest context up to ``wanted`` whose estimate fits ``room_bytes``.

    ``wanted`` itself when it fits; else a multiple of :data:`CTX_STEP` (at least
    :data:`MIN_CTX_SIZE`, which may still not fit: the fit check then refuses the load).
    """
    if facts.estimate_bytes(wanted) <= room_bytes:
        return wanted
    per_cell = facts.kv_cache_bytes(1)
    if per_cell <= 0:
        return wanted
    cells = (room_bytes - facts.estimate_bytes(0)) // per_cell
    return max(MIN_CTX_SIZE, min(wanted, cells // CTX_STEP * CTX_STEP))
