"""A load client cheap enough not to be the bottleneck at thousands of tokens per second.

Streams are read by an ``asyncio.Protocol`` that counts events in the raw bytes
(``bytes.count``, chunked framing and all) instead of parsing them: a token is one
``data: {`` event, less the final one that carries the finish reason. A stream ends at its
``data: [DONE]`` event followed by the terminating chunk, so a keep-alive connection (the
Jupyter server keeps them) goes back to this client's pool; the fast upstream closes its
connection after a stream, as llama-server does, and a fresh one is opened each time.

Plain requests go over a blocking keep-alive socket (:class:`PlainClient`): the least a client
adds to a round trip.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from .procs import BenchmarkError

_EVENT = b"data: {"
_DONE = b"data: [DONE]"
_END = b"0\r\n\r\n"
_CARRY = len(_DONE) - 1


@dataclass
class StreamResult:
    start: float  # request sent (perf_counter)
    first: float  # first content event read
    end: float  # last byte read
    tokens: int
    reads: int

    @property
    def ttft_ms(self) -> float:
        return (self.first - self.start) * 1000

    @property
    def rate(self) -> float:
        """Tokens per second of the stream once it flows (first token to last)."""
        span = self.end - self.first
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else 0.0


class _Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.sink: _Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.sink is not None:
            self.sink.lost()


class _Stream:
    """The state of one answer being read."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.head = b""
        self.status = 0
        self.carry = b""
        self.events = 0
        self.first = 0.0
        self.last = 0.0
        self.reads = 0
        self.seen_done = False

    def feed(self, data: bytes) -> None:
        now = time.perf_counter()
        self.reads += 1
        self.last = now
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            data = self.head[end + 4:]
            if self.status != 200:
                self._finish(BenchmarkError(f"HTTP {self.status}: {self.head[:300]!r}"))
                return
        buf = self.carry + data
        found = buf.count(_EVENT) - self.carry.count(_EVENT)
        if found and not self.events:
            self.first = now
        self.events += found
        if not self.seen_done and _DONE in buf:
            self.seen_done = True
        self.carry = buf[-_CARRY:]
        if self.seen_done and buf.endswith(_END):
            self._finish(None)

    def lost(self) -> None:
        if self.seen_done:
            self._finish(None)
        else:
            self._finish(BenchmarkError("the connection closed before the end of the stream"))

    def _finish(self, exc: BaseException | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)


class StreamClient:
    """POSTs streaming requests to one ``host:port``.

    ``reuse``: keep connections for the next stream (the Jupyter server keeps them); off for
    a server that closes the connection after a stream without saying so (llama-server and
    its stand-in), where a pooled connection would be stale."""

    def __init__(self, port: int, headers: dict[str, str], host: str = "127.0.0.1", *,
                 reuse: bool = True) -> None:
        self.host, self.port = host, port
        self._reuse = reuse
        self._head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._idle: list[_Reader] = []

    async def _connection(self) -> _Reader:
        while self._idle:
            reader = self._idle.pop()
            if not reader.closed.done():
                return reader
        loop = asyncio.get_running_loop()
        _, reader = await loop.create_connection(_Reader, self.host, self.port)
        sock = reader.transport.get_extra_info("socket") if reader.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader

    async def stream(self, path: str, body: bytes) -> StreamResult:
        start = time.perf_counter()
        reader = await self._connection()
        state = _Stream(asyncio.get_running_loop().create_future())
        reader.sink = state
        assert reader.transport is not None
        reader.transport.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            await state.done
        finally:
            reader.sink = None
        if (not self._reuse or reader.closed.done()
                or b"connection: close" in state.head.lower()):
            reader.transport.close()
        else:
            self._idle.append(reader)
        if not state.events:
            raise BenchmarkError(f"a stream from port {self.port} had no event")
        return StreamResult(start, state.first, state.last, state.events - 1, state.reads)

    def close(self) -> None:
        for reader in self._idle:
            if reader.transport is not None:
                reader.transport.close()
        self._idle.clear()


class PlainClient:
    """Blocking keep-alive HTTP/1.1 POSTs with Content-Length answers."""

    def __init__(self, port: int, headers: dict[str, str], host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self._head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._sock: socket.socket | None = None

    def post(self, path: str, body: bytes) -> bytes:
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self._head}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        for attempt in (1, 2):
            if self._sock is None:
                self._sock = socket.create_connection((self.host, self.port))
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                more = self._sock.recv(65536)
                if not more:
                    break
                data += more
            if not data:  # the server closed the idle connection: once more on a fresh one
                self.close()
                if attempt == 1:
                    continue
                raise BenchmarkError(f"port {self.port} closed the connection")
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                more = self._sock.recv(65536)
                if not more:
                    raise BenchmarkError(f"port {self.port}: answer cut short")
                rest += more
            if head[9:12] != b"200":
                raise BenchmarkError(f"port {self.port}: {head[:200]!r} {rest[:200]!r}")
            if b"connection: close" in head.lower():
                self.close()
            return rest
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
