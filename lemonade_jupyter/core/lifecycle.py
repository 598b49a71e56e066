"""A live model's lifecycle: its states, the moves allowed between them, and change signals.

One table (:data:`ALLOWED`) says which state may follow which; :meth:`LiveModel.set_state
<lemonade_jupyter.core.live_model.LiveModel.set_state>` is the only writer and checks it. An
illegal move is logged as an internal error (and counted in :data:`illegal_moves`, which the
test suite checks after every test), never silently taken.

``in_use`` is not stored: a ready model with requests in flight *is* in use, so the state is
derived from the in-flight count and cannot disagree with it.

Moves (the table below is the truth; this is the picture)::

    LOADING    -> READY (started) | UNLOADED (failed)
    READY      -> LOADING (reload) | DOWNSIZING | EVICTING | UNLOADED (crash, stop)
    DOWNSIZING -> DOWNSIZED | UNLOADED (crash)
    DOWNSIZED  -> LOADING (restore) | EVICTING | UNLOADED (stop)
    EVICTING   -> UNLOADED

``UNLOADED`` is terminal: the entry is forgotten, and the next load makes a new one.
"""

from __future__ import annotations

import asyncio
import enum
import logging

log = logging.getLogger(__name__)


class ModelState(str, enum.Enum):
    """What a live model is doing (``IN_USE`` is derived, never stored)."""

    LOADING = "loading"
    READY = "ready"
    IN_USE = "in_use"
    DOWNSIZING = "downsizing"
    DOWNSIZED = "downsized"
    EVICTING = "evicting"
    UNLOADED = "unloaded"


class TransitionKind(str, enum.Enum):
    """The single-flight task a model may be running (at most one at a time)."""

    LOAD = "load"  # a fresh entry: admission into its pool, then a start
    RESTORE = "restore"  # a downsized model gets a new backend in its slot
    RELOAD = "reload"  # the process options changed: a new backend in the same slot
    DOWNSIZE = "downsize"
    EVICT = "evict"

    @property
    def starts_a_backend(self) -> bool:
        return self in (TransitionKind.LOAD, TransitionKind.RESTORE, TransitionKind.RELOAD)


#: Which stored state may follow which. Anything else is a bug in the router.
ALLOWED: dict[ModelState, frozenset[ModelState]] = {
    ModelState.LOADING: frozenset({ModelState.READY, ModelState.UNLOADED}),
    ModelState.READY: frozenset({
        ModelState.LOADING,  # reload with new process options
        ModelState.DOWNSIZING,
        ModelState.EVICTING,
        ModelState.UNLOADED,  # the backend crashed, or the router stops
    }),
    ModelState.DOWNSIZING: frozenset({ModelState.DOWNSIZED, ModelState.UNLOADED}),
    ModelState.DOWNSIZED: frozenset({ModelState.LOADING, ModelState.EVICTING,
                                     ModelState.UNLOADED}),
    ModelState.EVICTING: frozenset({ModelState.UNLOADED}),
    ModelState.UNLOADED: frozenset(),
}

#: Stored states in which a request can be sent to the backend right now.
SERVING = frozenset({ModelState.READY, ModelState.IN_USE})

#: Illegal moves seen in this process (each is also logged as an error).
illegal_moves: list[tuple[str, ModelState, ModelState]] = []


def check_move(model: str, old: ModelState, new: ModelState) -> bool:
    """True when ``old → new`` is in the table; else log it as an internal error."""
    if new in ALLOWED[old]:
        return True
    illegal_moves.append((model, old, new))
    log.error("Internal error: model %s moved from %s to %s, which the lifecycle table forbids",
              model, old.value, new.value)
    return False


class ChangeSignal:
    """Wakes everyone who waits for "something about the models changed".

    :meth:`notify` is called by every writer of something a waiter may wait for: a state, an
    admission, an in-flight or waiter count, a pin, the settings, the end of a transition.
    Waiters re-check their condition after each wake-up, so a spurious wake is harmless, and
    there is no polling interval: a waiter sleeps until the change itself.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.version = 0

    def notify(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        """Return at the next :meth:`notify` (which may already have passed: re-check)."""
        await self._event.wait()
