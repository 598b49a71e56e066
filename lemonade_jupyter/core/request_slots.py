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

Owner: this module is the only writer of a model's ``busy_slots`` and ``slot_queue``, on the
router's loop; every change notifies the router's change signal.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import QueueFullError
from .lifecycle import ChangeSignal
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


def take(m: LiveModel, changes: ChangeSignal) -> None:
    """Count one more request in ``m``'s slots (no await between the check and this)."""
    m.busy_slots += 1
    changes.notify()


def give_back(m: LiveModel, changes: ChangeSignal) -> None:
    """A request that held a slot of ``m`` ended: the first one waiting may take it."""
    m.busy_slots = max(0, m.busy_slots - 1)
    changes.notify()


async def wait_for_slot(m: LiveModel, bound: int | None, changes: ChangeSignal,
                        serving: Callable[[], bool]) -> bool:
    """Wait in ``m``'s queue until it is this request's turn and a slot is free.

    Returns True when the caller may :func:`take` the slot now (before any other await);
    False when ``m`` stopped serving meanwhile (``serving()`` turned False: evicted, crashed,
    reloading), so the caller must ask the router for the model again. Raises QueueFullError
    at once when ``bound`` requests already wait. A cancelled wait leaves the queue.
    """
    if bound is not None and len(m.slot_queue) >= bound:
        raise QueueFullError(m.name, slots=slots_of(m) or 0, queued=len(m.slot_queue),
                             retry_after_s=RETRY_AFTER_S)
    ticket = object()
    m.slot_queue.append(ticket)
    changes.notify()  # the model is busy now: nothing evicts it under the waiting request
    try:
        while True:
            if not serving():
                return False
            slots = slots_of(m)
            if m.slot_queue[0] is ticket and (slots is None or m.busy_slots < slots):
                return True
            await changes.wait()
    finally:
        m.slot_queue.remove(ticket)
        changes.notify()
