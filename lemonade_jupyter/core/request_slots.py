"""How many requests a model serves at once, and the bounded wait for a free slot.

llama-server serves ``--parallel`` requests at once (its *slots*) and queues the rest inside,
without bound and out of sight: a burst of requests to a busy model piles up there, each
client waiting as long as the whole pile. So the router counts, per model, the requests that
hold a slot; the excess waits here, first come first served, in the model's ``slot_queue``,
and beyond ``max_queue`` waiting requests (the load option, else the setting; -1: no bound) a
request is refused at once with :class:`~lemonade_jupyter.errors.QueueFullError` (429 and
``Retry-After``) instead of an unbounded wait.

What "waiting" means: a request has its lease (the model is loaded, it counts as in flight)
but no slot yet. Requests that use no slot (tokenizing, counting tokens, applying the chat
template: llama-server answers them at once, beside the running slots) never wait here.
Waiting requests make the model busy, so it is not evicted under them.

The slot count is the ``parallel`` load option, else what the backend said at readiness
(``/props`` ``total_slots``); a backend that says nothing is not limited here.

Rules only: this module reads a model and says what may happen; the writes (taking a slot,
joining and leaving the queue) are :class:`~.model_records.ModelRecords`', on the router's loop,
and every one of them wakes the model's change signal.
"""

from __future__ import annotations

from ..errors import QueueFullError
from .live_model import LiveModel
from .settings import RouterSettings

#: ``Retry-After`` of a 429: about one request's time on a small local model.
RETRY_AFTER_S = 1


def slots_of(m: LiveModel) -> int | None:
    """The requests ``m`` serves at once; None when unknown (no limit here)."""
    if m.options.parallel is not None:
        return m.options.parallel
    return m.backend.total_slots if m.backend is not None else None


def queue_bound(m: LiveModel, settings: RouterSettings) -> int | None:
    """How many requests may wait for ``m``; None for no bound."""
    bound = m.options.max_queue if m.options.max_queue is not None else settings.max_queue
    return None if bound < 0 else bound


def has_free_slot(m: LiveModel) -> bool:
    """Whether a new request may take a slot of ``m`` now: one is free and nobody waits."""
    slots = slots_of(m)
    return slots is None or (not m.slot_queue and m.busy_slots < slots)


def check_queue(m: LiveModel, bound: int | None) -> None:
    """Raise QueueFullError (429) when ``bound`` requests already wait for ``m``."""
    if bound is not None and len(m.slot_queue) >= bound:
        raise QueueFullError(m.name, slots=slots_of(m) or 0, queued=len(m.slot_queue),
                             retry_after_s=RETRY_AFTER_S)


def is_turn_of(m: LiveModel, ticket: object) -> bool:
    """Whether the waiting request ``ticket`` is first in ``m``'s queue and a slot is free."""
    slots = slots_of(m)
    return m.slot_queue[0] is ticket and (slots is None or m.busy_slots < slots)
