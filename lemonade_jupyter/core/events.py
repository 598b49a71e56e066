"""Router events: every load, unload, eviction, downsize, restore, pin, crash and reload.

Events are kept in a bounded ring with increasing ids so an SSE client can resume with
``Last-Event-ID``; listeners (metrics, persistence) are called synchronously on the loop and
subscribers get their own queue.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
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

    def emit(self, kind: str, model: str | None = None, reason: str | None = None,
             **detail: Any) -> Event:
        """Record an event and hand it to listeners and subscribers."""
        before = detail.pop("memory_before", None)
        after = detail.pop("memory_after", None)
        event = Event(next(self._ids), time.time(), kind, model, reason, before, after, detail)
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
