"""Router events: every load, unload, eviction, downsize, restore, pin, crash and reload.

Events are kept in a bounded ring with increasing ids so an SSE client can resume with
``Last-Event-ID``; listeners (metrics, persistence) are called synchronously on the loop and
subscribers get their own queue.

Each event names the ``user`` whose request caused it: the HTTP layer sets :data:`acting_user`
for the request's task, and every task the router starts for that request (a load, the
evictions it needs) inherits it, so no router method has to carry a user argument. Events of
the router's own tasks (watchdog, eviction engine, restore at start) carry none. With an
``owner_of`` lookup (the owner registry, ``core/owners.py``), an event about a model also names
its ``owner``: an eviction then says both whose load evicted and whose model went.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

#: Event kinds. ``evict`` carries a reason: lru, idle, pressure, manual, retry, crash.
KINDS = (
    "load", "load_failed", "unload", "evict", "downsize", "restore", "pin", "unpin",
    "crash", "reload", "config", "pull", "context",
    # Remote models: registered/deleted, and a replica found reachable or unreachable.
    "remote", "reachable", "unreachable",
)

#: The user whose request runs in this task (None: the router's own work).
acting_user: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lemonade_acting_user", default=None)


@dataclass(frozen=True)
class Event:
    """One decision of the router, with its reason and memory figures where known."""

    id: int
    time: float
    kind: str
    model: str | None = None
    reason: str | None = None
    memory_before: int | None = None
    memory_after: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    user: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None and v != {}}


class EventLog:
    """A bounded ring of events plus live subscribers. Owned by the router's loop."""

    def __init__(self, capacity: int = 500) -> None:
        self._ring: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._listeners: list[Callable[[Event], None]] = []
        self._queues: set[asyncio.Queue[Event]] = set()
        #: Who owns a model (None: nobody known); set by the app that keeps owners.
        self.owner_of: Callable[[str], str | None] | None = None

    def emit(self, kind: str, model: str | None = None, reason: str | None = None,
             **detail: Any) -> Event:
        """Record an event and hand it to listeners and subscribers."""
        before = detail.pop("memory_before", None)
        after = detail.pop("memory_after", None)
        if model is not None and self.owner_of is not None and kind != "load":
            # A fresh load's owner is the event's user (the registry learns it from this event).
            owner = self.owner_of(model)
            if owner is not None:
                detail.setdefault("owner", owner)
        event = Event(next(self._ids), time.time(), kind, model, reason, before, after, detail,
                      acting_user.get())
        self._ring.append(event)
        for listener in self._listeners:
            listener(event)
        for queue in self._queues:
            if queue.full():  # a slow subscriber loses its oldest event, never blocks us
                queue.get_nowait()
            queue.put_nowait(event)
        return event

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def recent(self, after_id: int = 0, limit: int | None = None) -> list[Event]:
        """A snapshot of the ring, oldest first, with ids greater than ``after_id``."""
        events = [e for e in self._ring if e.id > after_id]
        return events[-limit:] if limit else events

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._queues.discard(queue)

    @property
    def subscriber_count(self) -> int:
        return len(self._queues)

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._ring))
