"""The proxy's upstream client before aiohttp: tornado's HTTP/1.1 parser on a hand-written pool.

Kept only as a candidate of section 8 (``benchmarks/clients.py``), so that the comparison that
chose aiohttp can be run again; the proxy no longer uses it. It keeps tornado's own HTTP/1.1
parser (``HTTP1Connection`` in client mode, a tornado internal) and adds reuse of connections;
streamed chunks are handed over one at a time, tornado reading no further until the previous
one was taken.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from dataclasses import dataclass
from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream, StreamClosedError

from lemonade_jupyter.errors import BackendTransportError

_EOF = object()
_CLOSED = object()


class UpstreamTransportError(BackendTransportError):
    """The connection to a backend failed before a complete answer (refused, reset, closed).

    A :class:`BackendTransportError`, so ``Router.call`` reports the backend and replays."""


@dataclass
class UpstreamResponse:
    """A complete, non-streamed answer."""

    code: int
    headers: httputil.HTTPHeaders
    body: bytes


class _Reader(httputil.HTTPMessageDelegate):
    """Collects one response; in streaming mode hands chunks over one at a time."""

    def __init__(self, streaming: bool) -> None:
        self.code: int | None = None
        self.headers = httputil.HTTPHeaders()
        self.chunks: list[bytes] = []
        self.streaming = streaming
        self._loop = asyncio.get_running_loop()
        self.headers_ready: asyncio.Future[None] = self._loop.create_future()
        # Streaming hand-over: at most one chunk (plus an end marker) waits here, because
        # tornado reads no further until ``_taken`` resolves (backpressure). Plain futures, not
        # an asyncio.Queue: this runs once per token, and the queue's bookkeeping cost more.
        self._items: collections.deque[Any] = collections.deque()
        self._waiting: asyncio.Future[None] | None = None
        self._taken: asyncio.Future[None] | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.code = start_line.code
        self.headers = headers
        if not self.headers_ready.done():
            self.headers_ready.set_result(None)

    def data_received(self, chunk: bytes) -> Any:
        if not self.streaming:
            self.chunks.append(chunk)
            return None
        self._push(chunk)
        self._taken = self._loop.create_future()
        return self._taken  # tornado reads on once the consumer has taken this chunk

    def finish(self) -> None:
        if self.streaming:
            self._push(_EOF)

    def on_connection_close(self) -> None:
        if self.streaming:
            self._push(_CLOSED)
        self.fail(UpstreamTransportError("the backend closed the connection"))

    def _push(self, item: Any) -> None:
        self._items.append(item)
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def take(self) -> Any:
        """The next chunk, ``_EOF`` or ``_CLOSED``."""
        while not self._items:
            self._waiting = self._loop.create_future()
            await self._waiting
        item = self._items.popleft()
        if self._taken is not None and not self._taken.done():
            self._taken.set_result(None)
        return item

    def fail(self, exc: BaseException) -> None:
        if not self.headers_ready.done():
            self.headers_ready.set_exception(exc)
            self.headers_ready.exception()  # retrieved: nobody may be waiting any more


class UpstreamStream:
    """A streamed answer: ``code``, ``headers``, then ``async for chunk in stream``."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int], stream: IOStream,
                 reader: _Reader, task: asyncio.Task[bool], request_headers: dict[str, str]
                 ) -> None:
        self._pool, self._key, self._stream = pool, key, stream
        self._request_headers = request_headers
        self._reader, self._task = reader, task
        self.code: int = reader.code or 0
        self.headers = reader.headers

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        item = await self._reader.take()
        if item is _EOF:
            raise StopAsyncIteration
        if item is _CLOSED:
            raise UpstreamTransportError("the backend closed the connection mid-answer")
        return item  # type: ignore[no-any-return]

    async def read(self) -> bytes:
        """The rest of the body at once (for error answers)."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Give the connection back if the answer was read to its end, else close it."""
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            self._pool._checkin(self._key, self._stream, self._reader, self._task.result(),
                                self._request_headers)
            return
        self._task.cancel()
        self._pool._discard(self._stream)


class UpstreamPool:
    """Idle keep-alive connections per backend ``(host, port)``; requests on tornado's parser."""

    def __init__(self, *, idle_s: float = 3.0, max_idle_per_backend: int = 32,
                 connect_timeout_s: float = 5.0, max_body_bytes: int = 1 << 30) -> None:
        self.idle_s = idle_s
        self.max_idle_per_backend = max_idle_per_backend
        self.connect_timeout_s = connect_timeout_s
        self._params = HTTP1ConnectionParameters(max_body_size=max_body_bytes)
        self._idle: dict[tuple[str, int], list[tuple[IOStream, float]]] = {}
        self._active: set[IOStream] = set()

    async def post(self, host: str, port: int, path: str, body: bytes,
                   headers: dict[str, str]) -> UpstreamResponse:
        """Send a POST and read the whole answer."""
        key = (host, port)
        for attempt in (1, 2):
            stream, reused = await self._connection(key, allow_reuse=attempt == 1)
            reader = _Reader(streaming=False)
            try:
                conn = self._send(stream, key, path, body, headers)
                still_open = await conn.read_response(reader)
            except (StreamClosedError, OSError) as exc:
                self._discard(stream)
                if reused and reader.code is None:
                    continue
                raise UpstreamTransportError(str(exc) or type(exc).__name__) from exc
            except BaseException:
                self._discard(stream)  # cancelled mid-answer: the connection is in an unknown state
                raise
            if reader.code is None:  # closed before any answer (tornado said so, not raised)
                self._discard(stream)
                if reused:
                    continue
                raise UpstreamTransportError("the backend closed the connection")
            self._checkin(key, stream, reader, still_open, headers)
            return UpstreamResponse(reader.code, reader.headers, b"".join(reader.chunks))
        raise AssertionError("unreachable: the last attempt always uses a fresh connection")

    async def stream(self, host: str, port: int, path: str, body: bytes,
                     headers: dict[str, str]) -> UpstreamStream:
        """Send a POST and return once the answer's headers are in; the body streams."""
        key = (host, port)
        for attempt in (1, 2):
            stream, reused = await self._connection(key, allow_reuse=attempt == 1)
            reader = _Reader(streaming=True)
            task: asyncio.Future[bool] | None = None
            try:
                conn = self._send(stream, key, path, body, headers)
                task = asyncio.ensure_future(conn.read_response(reader))
                task.add_done_callback(lambda t, r=reader: _fail_reader(t, r))
                await reader.headers_ready
            except (UpstreamTransportError, StreamClosedError, OSError) as exc:
                self._discard(stream)
                if reused:
                    continue
                raise UpstreamTransportError(str(exc) or type(exc).__name__) from exc
            except BaseException:
                if task is not None:
                    task.cancel()
                self._discard(stream)
                raise
            assert task is not None
            return UpstreamStream(self, key, stream, reader, task, headers)
        raise AssertionError("unreachable: the last attempt always uses a fresh connection")

    def close(self) -> None:
        """Close every connection, idle or in use (the extension is stopping).

        In-flight requests fail at once instead of holding their backend busy: llama-server
        ignores SIGTERM while it streams, so shutdown would otherwise wait for its kill timeout.
        """
        for idle in self._idle.values():
            for stream, _ in idle:
                stream.close()
        self._idle.clear()
        for stream in list(self._active):
            self._discard(stream)

    def idle_count(self, host: str, port: int) -> int:
        return len(self._idle.get((host, port), ()))

    # ------------------------------------------------------------------ internals
    async def _connection(self, key: tuple[str, int], allow_reuse: bool) -> tuple[IOStream, bool]:
        """An idle connection if there is one (and ``True``), else a fresh one."""
        reused = self._checkout(key) if allow_reuse else None
        stream = reused if reused is not None else await self._connect(key)
        self._active.add(stream)
        return stream, reused is not None

    def _checkout(self, key: tuple[str, int]) -> IOStream | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            stream, since = idle.pop()
            if now - since < self.idle_s and _looks_open(stream):
                return stream
            self._discard(stream)
        return None

    def _checkin(self, key: tuple[str, int], stream: IOStream, reader: _Reader,
                 still_open: bool, request_headers: dict[str, str]) -> None:
        reusable = (
            still_open
            and not stream.closed()
            and reader.headers.get("Connection", "").lower() != "close"
            and request_headers.get("Connection", "").lower() != "close"
        )
        self._active.discard(stream)
        idle = self._idle.setdefault(key, [])
        if reusable and len(idle) < self.max_idle_per_backend:
            idle.append((stream, time.monotonic()))
        else:
            self._discard(stream)

    def _discard(self, stream: IOStream) -> None:
        self._active.discard(stream)
        stream.close()

    async def _connect(self, key: tuple[str, int]) -> IOStream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stream = IOStream(sock)
        try:
            await asyncio.wait_for(stream.connect(key), self.connect_timeout_s)
        except (StreamClosedError, OSError, asyncio.TimeoutError) as exc:
            stream.close()
            raise UpstreamTransportError(
                f"cannot connect to {key[0]}:{key[1]}: {exc or type(exc).__name__}"
            ) from exc
        except BaseException:
            stream.close()
            raise
        stream.set_nodelay(True)
        return stream

    def _send(self, stream: IOStream, key: tuple[str, int], path: str, body: bytes,
              headers: dict[str, str]) -> HTTP1Connection:
        conn = HTTP1Connection(stream, True, self._params)
        out = httputil.HTTPHeaders(headers)
        out["Host"] = f"{key[0]}:{key[1]}"
        out["Content-Length"] = str(len(body))
        conn.write_headers(httputil.RequestStartLine("POST", path, "HTTP/1.1"), out, body)
        conn.finish()
        return conn


def _looks_open(stream: IOStream) -> bool:
    """True unless the peer closed this idle connection (or sent bytes nobody asked for)."""
    if stream.closed():
        return False
    try:
        stream.socket.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True  # nothing to read: still open and idle
    except OSError:
        return False
    return False  # b"" is the peer's close; stray bytes make it unusable too


def _fail_reader(task: asyncio.Task[bool], reader: _Reader) -> None:
    """If the read ended before the answer's headers, wake whoever waits for them."""
    if task.cancelled():
        reader.fail(UpstreamTransportError("request cancelled"))
    elif task.exception() is not None:
        reader.fail(task.exception())  # type: ignore[arg-type]
    else:
        reader.fail(UpstreamTransportError("the backend closed the connection"))
