"""HTTP/1.1 from the proxy to its local backends: plain requests on aiohttp's client, streams
on a connection of their own read by httptools (``backend_stream.py``).

Every proxied request, and every streamed token, costs the Jupyter server CPU. The client was
chosen by measurement: section 8 of ``benchmarks/RESULTS.md`` (``python -m benchmarks --only
clients``) runs the candidates side by side against the fast stand-in of llama-server. Per
streamed SSE event at 1,000 tokens/s aiohttp cost 0.059 ms of CPU, tornado's
``CurlAsyncHTTPClient`` (pycurl) 0.067 ms, tornado's HTTP/1.1 parser on the pool we had written
by hand 0.108 ms and httpx 0.136 ms, against 0.054 ms for asyncio with the least HTTP a client
can do. Per plain request the hand-written pool was cheaper (0.104 ms against 0.163), pycurl
0.269 ms, httpx 0.825 ms. Inside the Jupyter server that difference grows: on Python
3.11 aiohttp writes a request from a task of its own, one turn of the event loop later (3.12
starts that task at once), and a plain request through the proxy took 0.1–0.4 ms longer than
with the hand-written pool, measured side by side (time to first token too). Per streamed
token aiohttp halves the client's cost (with the proxy renaming on the bytes, one Jupyter
server core relays about three times as many tokens as before). Then the time to first token
showed aiohttp's per-request Python (0.4-0.5 ms of it inside the Jupyter server), so streams
left it for a protocol of their own whose parsing is httptools'; keep-alive pooling stays
aiohttp's. This module sets both up for a backend that is llama-server, and says what their
errors mean:

* Plain requests share keep-alive connections, dropped once idle for ``idle_s`` (llama-server
  closes idle connections after 5 s). A request that fails before any answer because the
  backend closed or reset the connection is sent once more, on a fresh connection: that is the
  race of a pooled connection the backend closed just as we reused it, so the backend never saw
  the request. aiohttp resends by itself only for idempotent methods, and these are POSTs.
* A stream goes on a connection of its own, closed at its end, and not through aiohttp:
  ``backend_stream.py`` writes its request at once and reads the answer with httptools (half a
  millisecond less before the first token; the figures are there). llama-server closes the
  connection after a stream although its answer advertises keep-alive, so it could not be
  pooled anyway. That connection is opened ahead: as a stream ends, one is opened for the
  backend's next stream (``warm_connections.py``: at most ``warm_streams`` per backend, dropped
  once idle for ``idle_s`` or closed by the backend), so a stream does not wait for a TCP
  connect; one the backend closed just as the stream went on it is resent once, on a fresh
  connection, as for plain requests.
* Backpressure: a reader stops reading the socket while more than twice ``read_bufsize``
  bytes wait to be taken (aiohttp's rule, kept for streams), so a client that reads slowly
  slows the backend down instead of filling our memory. A read returns everything that
  has arrived, so events that are already here are passed on in one write.
* No ``Accept-Encoding`` (nor ``Accept``, ``User-Agent``): a backend must not compress what the
  proxy passes on byte for byte.
* No cookie jar (aiohttp's own refuses cookies from IP addresses, and backends are IP
  literals, so it only cost a lookup per request). Each backend address's URL is parsed once.
* :meth:`UpstreamPool.close` closes every connection at once, idle or in flight, so shutdown
  does not wait for a backend that keeps streaming (llama-server ignores SIGTERM then).
* Every transport failure, aiohttp's or the OS's, becomes :class:`UpstreamTransportError` here
  and nowhere else, which ``Router.call`` reports and replays.

No tornado internals are used here any more (the proxy writes through ``RequestHandler``), so
tornado needs no upper bound; aiohttp's is its next major version.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from ..errors import BackendTransportError
from . import backend_stream
from .backend_stream import ClosedBeforeAnswer, StreamConnection
from .warm_connections import WarmConnections

#: What a transport failure can look like (aiohttp's own errors, the OS's, a connect timeout).
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)
#: The backend closed or reset a connection before any answer: resent once, on a fresh one.
_CLOSED_BEFORE_ANSWER = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                         aiohttp.ClientConnectionResetError)
#: Headers aiohttp would add on its own.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")


class UpstreamTransportError(BackendTransportError):
    """The connection to a backend failed before a complete answer (refused, reset, closed).

    A :class:`BackendTransportError`, so ``Router.call`` reports the backend and replays."""


@functools.lru_cache(maxsize=256)
def _backend_url(host: str, port: int, path: str) -> URL:
    """A backend route's URL, parsed once (few: backends times routes; immutable, shared)."""
    return URL(f"http://{host}:{port}{path}")


def _transport_error(exc: BaseException, what: str) -> UpstreamTransportError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        what = f"cannot connect to {exc.host}:{exc.port}"
    detail = str(exc) or type(exc).__name__
    return UpstreamTransportError(f"{what}: {detail}")


@dataclass
class UpstreamResponse:
    """A complete, non-streamed answer."""

    code: int
    headers: Mapping[str, str]
    body: bytes


class ChunkIteration:
    """``async for chunk in stream`` over ``next_chunk`` (``b""`` ends it): what a local
    backend's streamed answer and a replica's (``remote_upstream.RemoteStream``) share."""

    async def next_chunk(self) -> bytes:
        raise NotImplementedError

    def __aiter__(self) -> ChunkIteration:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.next_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk


class UpstreamStream(ChunkIteration):
    """A local backend's streamed answer: ``code``, ``headers``, then ``async for chunk in
    stream``. Its connection is never reused; closing it opens the connection for the backend's
    next stream ahead.

    Each chunk is everything that has arrived since the last one, cut anywhere (not at event
    boundaries); a transport failure mid-answer is an :class:`UpstreamTransportError`."""

    def __init__(self, pool: UpstreamPool, conn: StreamConnection,
                 backend: tuple[str, int]) -> None:
        self._pool = pool
        self._conn = conn
        self.code: int = conn.code
        self.headers: Mapping[str, str] = conn.headers
        #: Where the next stream's connection is opened when this one closes (None: done).
        self._backend: tuple[str, int] | None = backend
        self._closes = pool._closes

    async def next_chunk(self) -> bytes:
        """Everything that has arrived (waiting for something); ``b""`` at the end."""
        try:
            return await self._conn.next_chunk()
        except ConnectionError as exc:
            raise _transport_error(exc, "the backend's stream broke off") from exc

    def arrived(self) -> bytes:
        """What has arrived and was not taken yet, without waiting (``b""``: nothing yet, or
        the end)."""
        try:
            return self._conn.arrived()
        except ConnectionError as exc:
            raise _transport_error(exc, "the backend's stream broke off") from exc

    async def read(self) -> bytes:
        """The rest of the body at once (an error answer; bounded)."""
        try:
            return await self._conn.read()
        except ConnectionError as exc:
            raise _transport_error(exc, "the backend's answer failed") from exc

    async def aclose(self) -> None:
        """Close the stream's connection (it is never reused); open one for the backend's next
        stream, unless the pool was closed meanwhile (the server is stopping)."""
        self._pool._streams.discard(self._conn)
        self._conn.close()
        backend, self._backend = self._backend, None
        if backend is not None and self._closes == self._pool._closes:
            self._pool.open_ahead(*backend)


class UpstreamPool:
    """Connections to the backends, by ``(host, port)``, over three aiohttp sessions.

    Plain requests go over two aiohttp sessions: ``_pooled`` keeps connections; ``_once`` opens
    one for each request and closes it after (the resend after a stale connection); both are
    made on first use, on the loop that uses them (aiohttp binds a session to its loop). Each
    stream has a connection of its own (``backend_stream.py``), opened ahead when it can be
    (``warm``); ``_streams`` holds those in use, so :meth:`close` can end them."""

    def __init__(self, *, idle_s: float = 3.0, connect_timeout_s: float = 5.0,
                 read_bufsize: int = 1 << 16, warm_streams: int = 1) -> None:
        self.idle_s = idle_s
        self.connect_timeout_s = connect_timeout_s
        self.read_bufsize = read_bufsize
        #: Connections opened ahead of the next stream, at most ``warm_streams`` per backend.
        self.warm = WarmConnections(warm_streams, idle_s)
        self._pooled: aiohttp.ClientSession | None = None
        self._once: aiohttp.ClientSession | None = None
        #: Streams' connections in use (sent, or answering), not closed yet.
        self._streams: set[StreamConnection] = set()
        #: Counts :meth:`close` calls: a connection closed by our own shutdown is no stale one.
        self._closes = 0

    def _session(self, pooled: bool) -> aiohttp.ClientSession:
        session = self._pooled if pooled else self._once
        if session is None or session.closed:
            connector = (aiohttp.TCPConnector(limit=0, keepalive_timeout=self.idle_s)
                         if pooled else aiohttp.TCPConnector(limit=0, force_close=True))
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, read_bufsize=self.read_bufsize,
                skip_auto_headers=_SKIP_AUTO_HEADERS, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            )
            if pooled:
                self._pooled = session
            else:
                self._once = session
        return session

    async def post(self, host: str, port: int, path: str, body: bytes,
                   headers: dict[str, str]) -> UpstreamResponse:
        """Send a POST and read the whole answer."""
        try:
            response = await self._send(self._session(True), _backend_url(host, port, path),
                                        body, headers)
            async with response:
                return UpstreamResponse(response.status, response.headers, await response.read())
        except _TRANSPORT_ERRORS as exc:
            raise _transport_error(exc, "the backend request failed") from exc

    async def stream(self, host: str, port: int, path: str, body: bytes,
                     headers: dict[str, str]) -> UpstreamStream:
        """Send a POST on a connection of its own; return once the answer's headers are in.

        On a connection opened ahead if one is kept; if the backend closed that one before any
        answer, once more on a fresh connection (it never saw the request)."""
        data = backend_stream.request_bytes(host, port, path, body, headers)
        closes = self._closes
        kept = self.warm.take((host, port))
        if kept is not None:
            try:
                return await self._stream_on(kept, data, (host, port))
            except ClosedBeforeAnswer as exc:
                if closes != self._closes:
                    raise _transport_error(exc, "the backend request failed") from exc
            except ConnectionError as exc:
                raise _transport_error(exc, "the backend request failed") from exc
        try:
            conn = await self._connect(host, port)
        except (OSError, asyncio.TimeoutError) as exc:
            raise UpstreamTransportError(
                f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from exc
        try:
            return await self._stream_on(conn, data, (host, port))
        except ConnectionError as exc:
            raise _transport_error(exc, "the backend request failed") from exc

    async def _stream_on(self, conn: StreamConnection, data: bytes,
                         backend: tuple[str, int]) -> UpstreamStream:
        self._streams.add(conn)
        try:
            await conn.request(data)
        except BaseException:
            self._streams.discard(conn)
            raise
        return UpstreamStream(self, conn, backend)

    def open_ahead(self, host: str, port: int) -> None:
        """Open a connection for the next stream to ``host:port`` in the background (up to
        ``warm.per_backend`` are kept; see ``warm_connections.py``)."""
        self.warm.open_ahead((host, port), lambda: self._connect(host, port))

    async def _connect(self, host: str, port: int) -> StreamConnection:
        """A new connection for a stream (it buffers at most twice ``read_bufsize``)."""
        return await backend_stream.connect(host, port, self.connect_timeout_s,
                                            2 * self.read_bufsize)

    async def _send(self, session: aiohttp.ClientSession, url: URL, body: bytes,
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST on ``session``'s connection (kept or opened ahead); if the backend closed that
        connection before any answer, once more on a fresh one (it never saw the request)."""
        closes = self._closes
        try:
            return await session.post(url, data=body, headers=headers)
        except aiohttp.ClientConnectorError:
            raise
        except _CLOSED_BEFORE_ANSWER:
            if closes != self._closes:
                raise
            return await self._session(False).post(url, data=body, headers=headers)

    def close(self) -> None:
        """Close every connection, idle or in use (the extension is stopping).

        In-flight requests fail at once instead of holding their backend busy: llama-server
        ignores SIGTERM while it streams, so shutdown would otherwise wait for its kill timeout.
        The pool stays usable: a later request opens new connections.
        """
        self._closes += 1
        for conn in list(self._streams):
            conn.close()
        self._streams.clear()
        self.warm.close()
        sessions = [s for s in (self._pooled, self._once) if s is not None and not s.closed]
        self._pooled = self._once = None
        for session in sessions:
            # Closing the connector closes its connections now, the ones in flight too; what
            # it returns (and the session's own close) only waits for the sockets to go.
            closing = session.connector.close() if session.connector is not None else None
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                continue
            task = asyncio.ensure_future(_settle(closing, session))
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)


#: Closing tasks, referenced until done (the loop keeps only weak references to tasks).
_CLOSING: set[asyncio.Future[None]] = set()


async def _settle(closing: Any, session: aiohttp.ClientSession) -> None:
    if closing is not None:
        await closing
    await session.close()
