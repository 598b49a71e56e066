"""A request's way to a local model: pull it, load it, lease its backend, replay once.

Every name here is a model name (the router resolved aliases). A model whose files are not
here yet is pulled first (:meth:`~.catalog.Catalog.ensure_local`), then brought to serve by
the table. A lease counts one request in flight on a model, so the model is never evicted
under it; a generation's lease also holds one of the backend's parallel slots, waiting its
turn in the model's queue while all are busy (:mod:`.request_slots`). Ending a lease after an
answer tells the crash-loop guard that the backend served. :meth:`RequestLeases.call` is the
one place a transport failure becomes :class:`UpstreamError`: it asks the supervisor what
happened to the backend (dead, hung, or fine) and replays once through a new lease if the
caller allows it. The counts themselves are written by the table; this module decides when.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ..errors import BackendTransportError, InvalidRequestError, LemonadeError, UpstreamError
from . import placement, request_slots
from .catalog import Catalog
from .effects import Effects
from .events import EventLog
from .lease import Lease
from .lifecycle import ModelState
from .live_model import LiveModel
from .model_table import ModelTable
from .options import LoadOptions
from .supervisor import Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")


class RequestLeases:
    """Hands out leases on local backends, ends them, and replays a request once."""

    def __init__(self, table: ModelTable, supervisor: Supervisor, *, catalog: Catalog,
                 events: EventLog, effects: Effects) -> None:
        self._table = table
        self._supervisor = supervisor
        self._catalog = catalog
        self._events = events
        self._effects = effects

    async def load(self, name: str, *, pinned: bool | None, options: LoadOptions | None,
                   given: frozenset[str], reason: str) -> LiveModel:
        """Check the arguments, pull ``name`` if needed and make it serve (``Router.load``)."""
        if pinned is not None and not isinstance(pinned, bool):
            raise InvalidRequestError("Parameter 'pinned' must be a boolean", param="pinned")
        if options is not None and isinstance(options.device, tuple):
            # A GPU that does not exist is a 400 before anything changes (not a failed reload).
            sample = await self._effects.fresh(5.0)
            placement.choose(options, sample.gpus(), offload=False)
        await self._catalog.ensure_local(name, progress=self._events.emit)
        return await self._table.ensure(name, pinned=pinned, options=options or LoadOptions(),
                                        given=given, reason=reason, explicit=reason == "load")

    async def restore(self, names: tuple[str, ...]) -> None:
        """Load the models that were loaded when the router last stopped, one by one, with
        their remembered options; a failure is logged and the next one goes on."""
        for name in names:
            try:
                await self.load(name, pinned=None, options=None, given=frozenset(),
                                reason="restore")
            except LemonadeError as exc:
                log.warning("Could not restore %s at start: %s", name, exc.message)

    async def acquire(self, name: str, *, slot: bool, options: LoadOptions | None = None,
                      given: frozenset[str] = frozenset()) -> Lease:
        """Pull and load ``name`` if needed and take a lease on its backend (and, with
        ``slot``, a parallel slot). ``options`` (those in ``given``) apply only to a load this
        call starts: a model already there keeps its own. Raises QueueFullError (429) when
        ``max_queue`` requests already wait, and whatever loading raises."""
        await self._catalog.ensure_local(name, progress=self._events.emit)
        while True:
            m = await self._table.ensure(name, pinned=None, options=options or LoadOptions(),
                                         given=given, reason="request", explicit=False,
                                         new_only=True)
            if slot and not request_slots.has_free_slot(m):
                def serving(m: LiveModel = m) -> bool:
                    return (self._table.get(name) is m and m.backend is not None
                            and m.stored_state is ModelState.READY)

                bound = request_slots.queue_bound(m, self._effects.settings())
                if not await self._table.wait_for_slot(m, bound, serving):
                    continue  # it stopped serving meanwhile: ask for it again
            return Lease(m, self._table.take_lease(m, slot=slot), slot)

    def serves_now(self, name: str, *, slot: bool) -> bool:
        """Whether :meth:`acquire` of ``name`` would return without waiting: loaded and ready
        (no transition, a running backend) and, with ``slot``, a parallel slot free.

        Only a hint for what a caller does while it waits (a stream's pings): it is true only
        where :meth:`acquire` takes no await that suspends, and :meth:`acquire` decides."""
        m = self._table.get(name)
        return (m is not None and m.stored_state is ModelState.READY
                and m.backend is not None and not m.backend.exited.done()
                and self._table.transitions.current(name) is None
                and (not slot or request_slots.has_free_slot(m)))

    def release(self, lease: Lease, *, ok: bool) -> None:
        """End a lease; ``ok`` means the backend answered, which ends a crash streak."""
        self._table.end_lease(lease.model, slot=lease.slot)
        if ok and not lease.backend.exited.done():
            lease.backend.served = True
            self._effects.guard().success(lease.model.name)

    @contextlib.asynccontextmanager
    async def lease(self, name: str, *,
                    acquire: Callable[[str], Awaitable[Lease]]) -> AsyncIterator[Lease]:
        """A lease from ``acquire`` for the ``async with`` block; always released."""
        lease = await acquire(name)
        ok = False
        try:
            yield lease
            ok = True
        finally:
            self.release(lease, ok=ok)

    async def call(self, name: str, send: Callable[[Lease], Awaitable[T]], *,
                   replayable: Callable[[], bool],
                   acquire: Callable[[str], Awaitable[Lease]]) -> T:
        """Send through a lease from ``acquire``; after a transport failure, replay once.

        The supervisor finds out first what happened to the backend (a dead one is removed,
        a hung one killed, a pinned one reloaded). A second failure, or one that may not be
        replayed (``replayable()`` False: a stream that already reached the client), raises
        UpstreamError.
        """
        for attempt in (1, 2):
            lease = await acquire(name)
            ok = False
            try:
                result = await send(lease)
                ok = True
                return result
            except BackendTransportError as exc:
                failure = exc
            finally:
                self.release(lease, ok=ok)
            await self._supervisor.report_failure(lease.model, lease.backend)
            if attempt == 2 or not replayable():
                raise UpstreamError(
                    f"The backend of '{name}' failed: {failure.message}") from failure
        raise AssertionError("unreachable")
