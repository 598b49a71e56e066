"""Connections to a backend opened ahead of its next stream, so a stream does not wait for one.

Why: llama-server closes the connection after every stream (while its answer advertises
keep-alive), so each stream through the proxy needed a new TCP connection, opened while the
client waited for its first token. Profiled in the Jupyter server (timestamps in the handler and
in aiohttp against the client's send, one clock; 16-token streams at 1,000 tokens/s from
``benchmarks/fast_upstream.py``, one at a time, 200-300 per run, on a shared 2-core machine;
``benchmarks/RESULTS.md``, "The next stream's connection opened ahead"), medians: the handler's
``prepare`` starts 0.47-0.68 ms after the send (tornado reading the request), ``post`` 0.35-0.46
ms later (Jupyter's authentication), the lease is held 0.18-0.27 ms after that (JSON checks, the
router's slot accounting), aiohttp asks for a connection 0.12-0.16 ms later, and opening it took
0.25-0.38 ms (0.8 ms in an earlier profile); writing the request takes 0.05 ms, then the
backend's headers and first chunk arrive, and the client reads the chunk about 0.2 ms after the
proxy has it. Only the connection does not need the request, so it is opened before the request
comes. The backend's address is an IP literal, which aiohttp never resolves; the other steps are
Jupyter's or a few hundredths of a millisecond each.

When: as a stream ends, its backend gets one connection opened for the next stream (this
module), which that stream's connect takes (:class:`StreamConnector`). Opening it earlier, as
soon as a stream's first chunk had been passed on, cost that stream's first token more than it
saved the next one's: on a machine with few cores, the opening (ours and the backend's accept)
competes with the client reading its first token; the client read it 0.37–0.48 ms after the
proxy had it against 0.20 ms, in the same profile. While streams keep coming, each one's end
leaves the connection for the next, at any concurrency; only the first stream after a quiet
spell of ``idle_s`` connects itself.

How: a stream asks :meth:`WarmConnections.take` for a connection to its backend before it
connects itself (``upstream.py``). aiohttp's keep-alive pool cannot do this: it never opens a
connection before a request, has no way to drop one backend's connections, and a stream's
connection must never go back into it (streams do not go through aiohttp any more:
``backend_stream.py``). What is kept here is bounded and never stale:

* at most ``per_backend`` connections per backend, counting those being opened: each idle one
  holds one of llama-server's HTTP threads (the prebuilt engine here, 1 thread, default
  ``--parallel``, stopped answering ``/health`` with 9 idle connections open, until its 5 s
  keep-alive closed them), so the setting is capped at 4;
* a connection is kept ``idle_s`` at most (below llama-server's 5 s keep-alive), then closed;
* a connection the backend closed (it stopped, was evicted, or timed it out) is dropped the
  moment its end closes, and never handed out; the race of one closed just as a request went on
  it is the caller's to retry (``UpstreamPool.stream`` resends once on a fresh connection);
* :meth:`WarmConnections.close` closes them all and stops the openings under way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .backend_stream import StreamConnection

#: A backend: ``(host, port)``.
Key = tuple[str, int]


class WarmConnections:
    """Never-used connections, by backend, ready for the backend's next stream.

    Owns ``_idle`` (the connections, each with the timer that closes it when it has waited
    ``idle_s``), ``_opening`` (counts of openings in flight) and ``_tasks`` (those openings). All
    of it is written on the event loop's thread only: by :meth:`take` (a stream's connect),
    :meth:`open_ahead`, the opening tasks, the idle timers and the connections' close callbacks.
    """

    def __init__(self, per_backend: int = 1, idle_s: float = 3.0) -> None:
        self.per_backend = per_backend
        self.idle_s = idle_s
        self._idle: dict[Key, deque[tuple[StreamConnection, asyncio.TimerHandle]]] = {}
        self._opening: dict[Key, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Streams that found a connection kept for them (a running count).
        self.used = 0

    def count(self, key: Key | None = None) -> int:
        """Idle connections kept (for one backend, or for all): a snapshot."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(q) for q in self._idle.values())

    def kept(self, key: Key) -> list[StreamConnection]:
        """The connections kept for ``key``, oldest first: a snapshot (still ours)."""
        return [proto for proto, _ in self._idle.get(key, ())]

    def opening(self) -> int:
        """Openings in flight, for all backends: a snapshot."""
        return sum(self._opening.values())

    def take(self, key: Key) -> StreamConnection | None:
        """A kept connection to ``key`` that is still open, or None (it is ours to use now)."""
        queue = self._idle.get(key)
        while queue:
            proto, timer = queue.popleft()
            timer.cancel()
            if proto.is_connected():
                if not queue:
                    del self._idle[key]
                self.used += 1
                return proto
            proto.close()
        self._idle.pop(key, None)
        return None

    def open_ahead(self, key: Key, opener: Callable[[], Awaitable[StreamConnection]]) -> None:
        """Open one more connection to ``key`` in the background, unless ``per_backend`` are
        already kept or being opened. A failed opening is dropped silently: the next stream
        simply connects itself, and reports the failure if there is one."""
        if self.per_backend <= 0:
            return
        if self.count(key) + self._opening.get(key, 0) >= self.per_backend:
            return
        self._opening[key] = self._opening.get(key, 0) + 1
        task = asyncio.ensure_future(self._open(key, opener))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, key: Key, opener: Callable[[], Awaitable[StreamConnection]]) -> None:
        try:
            proto = await opener()
        except (OSError, asyncio.TimeoutError):
            return
        finally:
            self._opening[key] -= 1
            if not self._opening[key]:
                del self._opening[key]
        self._keep(key, proto)

    def _keep(self, key: Key, proto: StreamConnection) -> None:
        if not proto.is_connected():
            proto.close()
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.idle_s, self._drop, key, proto)
        self._idle.setdefault(key, deque()).append((proto, timer))
        # The backend closed it (exit, eviction, its own timeout): forgotten at once.
        proto.closed.add_done_callback(lambda _: self._drop(key, proto))

    def _drop(self, key: Key, proto: StreamConnection) -> None:
        """Close ``proto`` and forget it, if it is still kept (idle too long, or closed)."""
        queue = self._idle.get(key)
        if not queue:
            return
        for i, (kept, timer) in enumerate(queue):
            if kept is proto:
                del queue[i]
                timer.cancel()
                proto.close()
                break
        if not queue:
            del self._idle[key]

    def close(self) -> None:
        """Close every kept connection and cancel the openings under way (idempotent)."""
        for task in list(self._tasks):
            task.cancel()
        idle, self._idle = self._idle, {}
        for queue in idle.values():
            for proto, timer in queue:
                timer.cancel()
                proto.close()
