"""Following the router's event stream (``GET lemonade/api/v1/events``) from a daemon thread.

The dashboard shows the recent events with their reasons. ``EventFeed`` owns one thread that
reads the SSE stream into a bounded deque and reconnects with ``Last-Event-ID`` after a read
timeout or a dropped connection, so it never replays what it already has. A server without the
route (404) ends the thread and sets ``available = False``; the dashboard then says so instead
of showing an error. ``stop()`` hangs up the open stream, so the thread ends at once (within a
read timeout where the transport gives no socket to shut down).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ClientError
from .client import RouterClient

__all__ = ["EventFeed"]


class EventFeed:
    """Recent router events, followed on a daemon thread.

    Owns ``_events`` (written by the feed thread only; read as a snapshot by ``recent()``),
    ``available`` (None until the first answer) and ``error`` (the last connection problem).
    """

    def __init__(
        self,
        client: RouterClient,
        *,
        maxlen: int = 50,
        read_timeout: float = 2.0,
        retry_s: float = 2.0,
    ) -> None:
        self.client = client
        self.read_timeout = read_timeout
        self.retry_s = retry_s
        self.available: bool | None = None
        self.error = ""
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxlen)
        self._last_id: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._hangup: Callable[[], None] | None = None  # of the stream open now, if any

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start following (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lemonade-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end, hang up its stream, and wait for it (at most a read timeout
        plus a second)."""
        self._stop.set()
        hangup = self._hangup
        if hangup is not None:
            hangup()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.read_timeout + 1.0 if timeout is None else timeout)

    def recent(self) -> list[dict[str, Any]]:
        """A snapshot of the recent events, oldest first."""
        with self._lock:
            return list(self._events)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.client.events(self._last_id, read_timeout=self.read_timeout,
                                                on_open=self._opened):
                    self.available, self.error = True, ""
                    with self._lock:
                        self._events.append(event)
                    if isinstance(event.get("id"), int):
                        self._last_id = event["id"]
                    if self._stop.is_set():
                        return
                self.available = True  # the server ended a healthy stream: reconnect soon
                self._stop.wait(self.retry_s / 4)
            except ClientError as exc:
                if self._stop.is_set():
                    return  # hung up by stop()
                if exc.status_code == 404:
                    self.available = False
                    return
                if exc.status_code == 504:  # quiet stream: just reconnect and resume
                    continue
                self.error = str(exc)
                self._stop.wait(self.retry_s)

    def _opened(self, hangup: Callable[[], None]) -> None:
        self._hangup = hangup
        if self._stop.is_set():  # stop() came between the connect and now
            hangup()
