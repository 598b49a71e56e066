"""The context length a backend starts with: a number as asked, or ``auto`` (the default).

``auto`` (also spelled ``-1``, and what an absent ``ctx_size`` means) asks for the context the
model was trained with, read from its GGUF header (``<arch>.context_length``), capped by what
fits, because that can be far more than memory allows (128k tokens of KV cache for an 8B model
is 16 GiB):

* on a GPU, and on the CPU under ``memory_budget_mib``, the room is what admission by fit
  computes: the device's free memory (or the budget) plus what every model that may be
  evicted for it holds (:meth:`.fit_admission.FitAdmission.room`);
* on the CPU without a budget nothing is admitted by fit, so the room is
  :data:`CPU_ROOM_FRACTION` of the machine's available memory at the load (psutil): the other
  half stays for the notebooks, the kernels and the models loaded next;
* never below :func:`auto_floor` (:data:`AUTO_CTX_FLOOR` tokens, or the trained context when
  that is smaller): when even the floor does not fit, the fit check refuses the load (409) as it
  refuses any other, rather than starting a model too short to use;
* never above :data:`~.options.MAX_CTX_SIZE`; a header that names no context gives
  :data:`~.engines.llamacpp.DEFAULT_CTX_SIZE`.

A capped context is a multiple of :data:`CTX_STEP` (llama.cpp pads its context to 256 cells).
A number is taken exactly as given, unchecked against memory here (the fit check decides).

Pure functions over :class:`~.gguf_facts.GgufFacts`; the caller reads the header off the loop.
:class:`~.fit_admission.FitAdmission` is the one caller that decides a start's context.
"""

from __future__ import annotations

from .engines.llamacpp import DEFAULT_CTX_SIZE
from .gguf_facts import GgufFacts
from .options import AUTO_CTX_LABEL, AUTO_CTX_SIZE, MAX_CTX_SIZE, MIN_CTX_SIZE

#: Granularity of a capped context (llama.cpp rounds its context up to 256 cells).
CTX_STEP = 256
#: The least context ``auto`` starts a model with (unless it was trained with less): shorter
#: than this, a chat with a system prompt is cut off after a few turns.
AUTO_CTX_FLOOR = DEFAULT_CTX_SIZE
#: On the CPU without ``memory_budget_mib``: the share of the machine's available memory a
#: model started with ``auto`` may expect to fill (weights, KV cache and margin).
CPU_ROOM_FRACTION = 0.5


def is_auto(option: int | None) -> bool:
    """Whether a ``ctx_size`` option asks for ``auto`` (absent, ``"auto"`` or -1)."""
    return option is None or option == AUTO_CTX_SIZE


def requested_label(option: int | None) -> int | str:
    """What a ``ctx_size`` option asked for, as ``/health`` and the load answer show it."""
    return AUTO_CTX_LABEL if is_auto(option) else int(option)  # type: ignore[arg-type]


def trained_context(facts: GgufFacts | None) -> int:
    """The context the model was trained with, within our bounds; the default when the
    header does not say (or could not be read)."""
    if facts is None or facts.context_length <= 0:
        return DEFAULT_CTX_SIZE
    return max(MIN_CTX_SIZE, min(facts.context_length, MAX_CTX_SIZE))


def requested_context(option: int | None, facts: GgufFacts | None) -> int:
    """The context a start asks for before any cap: the number, or the trained one."""
    if is_auto(option):
        return trained_context(facts)
    return int(option)  # type: ignore[arg-type]


def auto_floor(wanted: int) -> int:
    """The least context ``auto`` caps ``wanted`` (the trained context) to."""
    return min(wanted, AUTO_CTX_FLOOR)


def cpu_room_bytes(available_bytes: int) -> int:
    """The room of a model on the CPU without a RAM budget, from the available memory."""
    return int(available_bytes * CPU_ROOM_FRACTION)


def largest_fitting_context(facts: GgufFacts, room_bytes: int, wanted: int) -> int:
    """The largest context up to ``wanted`` whose estimate fits ``room_bytes``.

    ``wanted`` itself when it fits; else a multiple of :data:`CTX_STEP`, but never below
    :func:`auto_floor` (which may still not fit: the fit check then refuses the load).
    """
    if facts.estimate_bytes(wanted) <= room_bytes:
        return wanted
    per_cell = facts.kv_cache_bytes(1)
    if per_cell <= 0:
        return wanted
    cells = (room_bytes - facts.estimate_bytes(0)) // per_cell
    return max(auto_floor(wanted), min(wanted, cells // CTX_STEP * CTX_STEP))
