"""One streamed request to a local backend, on a connection of its own, its answer parsed by
httptools.

Why not aiohttp, which plain requests use (``upstream.py``): the time to first token. Stamped
inside the Jupyter server (``time.perf_counter`` patched into the handler, aiohttp and the
relay; 16-token streams at 1,000 tokens/s from ``benchmarks/fast_upstream.py``, one at a time,
300 per run, a quiet 2-core machine), aiohttp took 0.39-0.43 ms from the stream's call to
writing the request on a connection already open, and 0.09 ms from the answer's first bytes to
handing back its headers, against 0.33 ms for the backend's own work in between: half a
millisecond of Python per stream (its request object, connector, timers, a task of its own for
the body on Python 3.11) before the first token could move. This module writes the request in
one ``write`` as soon as it is called and has the headers when the bytes that carry them
arrive; ``benchmarks/RESULTS.md`` ("The backend's request written at once") has the figures
before and after. A stream needs none of what aiohttp adds: no pool (llama-server closes the
connection after a stream), no redirects, cookies, compression, proxies or TLS (a local
backend is plain HTTP on loopback).

Nothing here parses HTTP by hand: the status line, headers and chunked framing are httptools'
(llhttp, Node.js's parser). What is written here is the request's bytes and the buffer between
the socket and the relay, with the bounds a stream needs:

* the answer's head may take at most :data:`MAX_HEAD_BYTES`; more is a failed answer;
* while more than ``max_buffered`` bytes wait to be taken, the socket is not read, so a client
  that reads slowly slows the backend down instead of filling our memory (aiohttp's rule);
* an error answer is read whole only up to :data:`MAX_ERROR_BODY_BYTES`.

Failures are ``ConnectionError``s (``upstream.py`` maps them to ``UpstreamTransportError``, the
one place that does): :class:`ClosedBeforeAnswer` when the connection ended before any byte of
an answer, which is the only case a request may be sent again (the backend never answered it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

#: Bytes of an answer's status line and headers at most.
MAX_HEAD_BYTES = 64 << 10
#: Bytes of a whole (error) answer :meth:`StreamConnection.read` takes at most.
MAX_ERROR_BODY_BYTES = 1 << 20
#: Headers the request line and body decide; a caller's own are not sent twice.
_OURS = frozenset({"host", "content-length", "transfer-encoding"})
#: What may not appear in a request path, a header name, a header value.
_NOT_IN_PATH = re.compile(r"[\x00-\x20\x7f]")
_NOT_IN_NAME = re.compile(r"[\x00-\x20:\x7f]")
_NOT_IN_VALUE = re.compile(r"[\r\n\x00]")


class ClosedBeforeAnswer(ConnectionError):
    """The connection ended before any byte of an answer: the backend never answered."""


class AnswerCutError(ConnectionError):
    """The connection ended, or broke the protocol, in the middle of an answer."""


def request_bytes(host: str, port: int, path: str, body: bytes,
                  headers: Mapping[str, str]) -> bytes:
    """A POST of ``body`` to ``path``, head and body in one buffer (one ``write``).

    ``path`` and the headers are the proxy's own (a route's path, the backend's key), never a
    client's; a space or control character where it would change the request is refused."""
    if not path.startswith("/") or _NOT_IN_PATH.search(path):
        raise ValueError(f"not a request path: {path!r}")
    host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {host_port}", f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if not name or _NOT_IN_NAME.search(name) or _NOT_IN_VALUE.search(value):
            raise ValueError(f"not a request header: {name!r}: {value!r}")
        if name.lower() not in _OURS:
            lines.append(f"{name}: {value}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


async def connect(host: str, port: int, timeout_s: float,
                  max_buffered: int) -> StreamConnection:
    """A new connection to ``host:port`` (``OSError`` or ``TimeoutError`` if none in
    ``timeout_s``)."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: StreamConnection(max_buffered), host, port), timeout_s)
    return conn


class StreamConnection(asyncio.Protocol):
    """One connection: one request, then its answer's head and body as they arrive.

    Owns the parser, the chunks received and not taken yet, and the futures the reader waits
    on; all of it written on the event loop's thread only (the protocol's callbacks and the
    reader's calls). The answer's body is taken with :meth:`next_chunk` (waiting) or
    :meth:`arrived` (what is here); either returns everything that arrived since the last take,
    cut anywhere, and ``b""`` at the end."""

    def __init__(self, max_buffered: int) -> None:
        self._max_buffered = max_buffered
        loop = asyncio.get_running_loop()
        self._loop = loop
        #: Done when the connection has ended (for whatever reason).
        self.closed: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._header_pairs: list[tuple[str, str]] = []
        #: Bytes fed before the head ended, and the head's own size (status line, headers).
        self._head_bytes = 0
        self._head_size = 0
        self._head_done = False
        self._framed = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: ConnectionError | None = None
        #: Some byte of an answer arrived (a resend would no longer be safe).
        self.answered = False
        self.code = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())

    # ------------------------------------------------------------------ the reader's side
    @property
    def transport(self) -> asyncio.Transport | None:
        """The connection's transport (None until it is made)."""
        return self._transport

    def is_connected(self) -> bool:
        """Open, and nothing came on it yet (bytes before a request, such as a server's
        timeout answer, make a connection unusable)."""
        return (self._transport is not None and not self._transport.is_closing()
                and not self.closed.done() and not self.answered)

    async def request(self, data: bytes) -> None:
        """Send ``data`` (a whole request) and wait for the answer's head (``code``,
        ``headers``). Cancelled, or failed, the connection is closed."""
        if self._transport is None or self._head is not None:
            raise RuntimeError("one request per connection, once connected")
        self._head = self._loop.create_future()
        if self._error is not None or self.closed.done() or self.answered:
            # Closed, or it carried bytes before any request: not an answer to this one.
            self._head.set_exception(ClosedBeforeAnswer(
                "the connection closed, or spoke, before the request"))
        else:
            self._transport.write(data)
        try:
            await self._head
        except BaseException:
            self.close()
            raise

    async def next_chunk(self) -> bytes:
        """Everything that has arrived (waiting for something); ``b""`` at the end."""
        if not self._chunks and not self._complete and self._error is None:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.arrived()

    def arrived(self) -> bytes:
        """What has arrived and was not taken yet, without waiting (``b""``: nothing yet, or
        the end); the failure, once everything before it was taken."""
        if self._chunks:
            chunks, self._chunks, self._buffered = self._chunks, [], 0
            if self._paused and self._transport is not None:
                self._paused = False
                self._transport.resume_reading()
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._error is not None:
            raise self._error
        return b""

    async def read(self) -> bytes:
        """The rest of the answer at once (an error answer), up to
        :data:`MAX_ERROR_BODY_BYTES`."""
        body = bytearray()
        while chunk := await self.next_chunk():
            body += chunk
            if len(body) > MAX_ERROR_BODY_BYTES:
                self.close()
                raise AnswerCutError(f"the answer is larger than {MAX_ERROR_BODY_BYTES} bytes")
        return bytes(body)

    def close(self) -> None:
        """Close the connection (idempotent); a reader still waiting fails."""
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------------ asyncio's side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if self._complete or self._error is not None:
            return  # nothing may follow the one answer (we asked for the connection's close)
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(AnswerCutError(f"the backend's answer is not valid HTTP: {exc}"))
            return
        # More than the bound fed and still no end of the head: the head is over it (one that
        # ended within this read was measured by ``on_headers_complete``).
        if not self._head_done and self._head_bytes > MAX_HEAD_BYTES:
            self._fail(AnswerCutError(f"the answer's head is larger than {MAX_HEAD_BYTES} bytes"))

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self._complete or self._error is not None:
            self._wake()
            return
        if self._head_done and not self._framed:
            self._complete = True  # no length, not chunked: the answer ends with the connection
            self._wake()
            return
        detail = f": {exc}" if exc else ""
        if not self.answered:
            self._fail(ClosedBeforeAnswer(f"the connection closed before an answer{detail}"))
        else:
            self._fail(AnswerCutError(f"the connection closed mid-answer{detail}"))

    # ------------------------------------------------------------------ the parser's callbacks
    def on_status(self, status: bytes) -> None:
        self._head_size += len(status) + 15  # "HTTP/1.1 200 " and its line end

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        self._header_pairs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._head_size > MAX_HEAD_BYTES:
            self._fail(AnswerCutError(
                f"the answer's head is larger than {MAX_HEAD_BYTES} bytes"))
            return
        self.code = self._parser.get_status_code()
        self.headers = CIMultiDictProxy(CIMultiDict(self._header_pairs))
        self._framed = ("content-length" in self.headers
                        or "chunked" in self.headers.get("transfer-encoding", "").lower())
        self._head_done = True
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._error is not None:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if (self._buffered > self._max_buffered and not self._paused
                and self._transport is not None):
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._error is not None:
            return
        self._complete = True
        self._wake()

    # ------------------------------------------------------------------ internals
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: ConnectionError) -> None:
        if self._error is None and not self._complete:
            self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()
        self.close()
