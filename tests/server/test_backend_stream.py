"""A stream's own HTTP client (server/backend_stream.py), through ``UpstreamPool.stream``, against
a loopback server that answers with scripted bytes: the request in one buffer and nothing a
caller could inject into it, the answer's framing (chunked, a length, or the connection's
close), its bounds (head, error body), answers that are not HTTP, a connection closed before any
answer, and a stream cancelled while it waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from lemonade_jupyter.server import backend_stream
from lemonade_jupyter.server.backend_stream import request_bytes
from lemonade_jupyter.server.upstream import UpstreamPool, UpstreamTransportError


class _Scripted:
    """What the scripted server got, and what it answers."""

    def __init__(self, answer: bytes, close: bool = True) -> None:
        self.answer = answer
        self.close = close
        self.port = 0
        self.requests: list[bytes] = []
        self.first_reads: list[bytes] = []
        self.closed = asyncio.Event()


@contextlib.asynccontextmanager
async def _server(answer: bytes, *, close: bool = True) -> AsyncIterator[_Scripted]:
    """A server that reads one request (head and ``Content-Length`` body), writes ``answer``
    and closes the connection (unless ``close`` is false: then it waits for the client's)."""
    seen = _Scripted(answer, close)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.first_reads.append(await reader.read(1 << 16))
            data = seen.first_reads[-1]
            while b"\r\n\r\n" not in data:
                more = await reader.read(1 << 16)
                if not more:
                    return
                data += more
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += await reader.readexactly(length - len(body))
            seen.requests.append(head + b"\r\n\r\n" + body)
            if seen.answer:
                writer.write(seen.answer)
                await writer.drain()
            if not seen.close:
                await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            seen.closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen.port = server.sockets[0].getsockname()[1]
    async with server:
        yield seen


_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


async def _stream(seen: _Scripted, body: bytes = b"{}",
                  headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """``(code, body)`` of a stream to ``seen``, read whole (10 s at most)."""
    return await asyncio.wait_for(_read_stream(seen, body, headers or {}), 10)


async def _read_stream(seen: _Scripted, body: bytes,
                       headers: dict[str, str]) -> tuple[int, bytes]:
    pool = UpstreamPool(warm_streams=0)
    try:
        resp = await pool.stream("127.0.0.1", seen.port, "/v1/chat/completions", body,
                                 headers)
        try:
            return resp.code, await resp.read()
        finally:
            await resp.aclose()
    finally:
        pool.close()


async def test_the_request_goes_out_whole_with_our_host_and_length():
    async with _server(_SSE_HEAD + b"Content-Length: 2\r\n\r\nok") as seen:
        code, body = await _stream(seen, b'{"a": 1}', {
            "Authorization": "Bearer k", "Content-Type": "application/json",
            "Host": "elsewhere", "Content-Length": "999"})
    assert (code, body) == (200, b"ok")
    (request,) = seen.requests
    head, _, sent = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{seen.port}".encode() in lines and b"Host: elsewhere" not in lines
    assert b"Content-Length: 8" in lines and b"Content-Length: 999" not in lines
    assert b"Authorization: Bearer k" in lines and sent == b'{"a": 1}'
    assert seen.first_reads[0] == request  # head and body in one write


@pytest.mark.parametrize("path, headers", [
    ("/v1/chat/completions", {"X-Evil": "a\r\nInjected: yes"}),
    ("/v1/chat/completions", {"Bad Name": "x"}),
    ("/v1/chat/completions", {"X-Nul": "a\0b"}),
    ("/v1/chat completions", {}),
    ("v1/chat/completions", {}),
    ("/v1/chat/completions\r\nInjected: yes", {}),
])
def test_a_line_break_or_space_never_reaches_the_request(path, headers):
    with pytest.raises(ValueError, match="not a request"):
        request_bytes("127.0.0.1", 8080, path, b"", headers)


async def test_chunked_answer_is_decoded():
    answer = _SSE_HEAD + (b"Transfer-Encoding: chunked\r\n\r\n"
                          b"9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n")
    async with _server(answer) as seen:
        assert await _stream(seen) == (200, b"data: 0\n\ndata: 1\n\n")


async def test_an_answer_without_length_ends_with_the_connection():
    async with _server(_SSE_HEAD + b"\r\ndata: 0\n\ndata: 1\n\n") as seen:
        assert await _stream(seen) == (200, b"data: 0\n\ndata: 1\n\n")


async def test_a_chunked_answer_cut_by_the_close_is_a_transport_error():
    answer = _SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n"
    async with _server(answer) as seen:
        with pytest.raises(UpstreamTransportError, match="mid-answer"):
            await _stream(seen)


async def test_an_error_answer_is_read_whole_up_to_its_bound(monkeypatch):
    monkeypatch.setattr(backend_stream, "MAX_ERROR_BODY_BYTES", 100)
    small = b'{"error": {"message": "bad", "code": 400}}'
    async with _server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(small), small)) as seen:
        assert await _stream(seen) == (400, small)
    async with _server(b"HTTP/1.1 500 Oops\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000,
                       close=False) as seen:
        with pytest.raises(UpstreamTransportError, match="larger than 100 bytes"):
            await _stream(seen)
        await asyncio.wait_for(seen.closed.wait(), 5)  # we closed it


@pytest.mark.parametrize("ends", [True, False], ids=["whole", "never-ending"])
async def test_a_head_over_its_bound_fails_and_closes_the_connection(monkeypatch, ends):
    monkeypatch.setattr(backend_stream, "MAX_HEAD_BYTES", 1000)
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"y" * 2000
    if ends:
        answer += b"\r\n\r\ndata: 0\n\n"
    async with _server(answer, close=False) as seen:
        with pytest.raises(UpstreamTransportError, match="head is larger than 1000 bytes"):
            await _stream(seen)
        await asyncio.wait_for(seen.closed.wait(), 5)


async def test_an_answer_that_is_not_http_is_a_transport_error():
    async with _server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", close=False) as seen:
        with pytest.raises(UpstreamTransportError, match="not valid HTTP"):
            await _stream(seen)
        await asyncio.wait_for(seen.closed.wait(), 5)


async def test_a_fresh_connection_closed_before_any_answer_is_not_resent():
    """Only a connection opened ahead may meet a close it did not cause; on a fresh one the
    backend had the request, so it is a failure, sent once."""
    async with _server(b"") as seen:
        with pytest.raises(UpstreamTransportError, match="closed before an answer"):
            await _stream(seen)
    assert len(seen.requests) == 1


async def test_a_stream_cancelled_while_waiting_for_its_answer_closes_its_connection():
    async with _server(b"", close=False) as seen:  # has the request, never answers
        pool = UpstreamPool(warm_streams=0)
        task = asyncio.ensure_future(
            pool.stream("127.0.0.1", seen.port, "/v1/chat/completions", b"{}", {}))
        for _ in range(500):  # bounded: 5 s
            if seen.requests:
                break
            await asyncio.sleep(0.01)
        assert seen.requests and not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(seen.closed.wait(), 5)  # the backend saw it go
        assert not pool._streams  # nothing left to close at shutdown
        pool.close()


@contextlib.asynccontextmanager
async def _speaks_first() -> AsyncIterator[dict[str, list[int]]]:
    """A server whose first connection says something before any request (a timeout answer, a
    moment after the connect) and then waits; the others answer a request with ``ok``."""
    seen: dict[str, list[int]] = {"accepted": [], "requests_on": [], "port": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["accepted"].append(len(seen["accepted"]) + 1)
        number = seen["accepted"][-1]
        try:
            if number == 1:
                await asyncio.sleep(0.2)
                writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            seen["requests_on"].append(number)
            writer.write(_SSE_HEAD + b"Content-Length: 2\r\n\r\nok")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen["port"].append(server.sockets[0].getsockname()[1])
    async with server:
        yield seen


async def _until(check, what: str) -> None:
    for _ in range(500):  # bounded: 5 s
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_kept_connection_that_spoke_before_its_request_is_not_used():
    """Bytes on a connection opened ahead before any request (a server's timeout answer) are no
    answer to the stream: it goes on a fresh connection."""
    async with _speaks_first() as seen:
        port = seen["port"][0]
        pool = UpstreamPool(warm_streams=1)
        pool.open_ahead("127.0.0.1", port)
        await _until(lambda: pool.warm.count() == 1, "the connection to be kept")
        (kept,) = pool.warm.kept(("127.0.0.1", port))
        await _until(lambda: kept.answered, "the server's early bytes")
        resp = await asyncio.wait_for(
            pool.stream("127.0.0.1", port, "/v1/chat/completions", b"{}", {}), 10)
        assert (resp.code, await resp.read()) == (200, b"ok")
        await resp.aclose()
        assert seen["requests_on"] == [2] and not kept.is_connected()
        assert pool.warm.used == 0  # never handed out
        pool.close()


async def test_a_request_on_a_connection_that_spoke_first_is_refused_unsent():
    async with _speaks_first() as seen:
        conn = await backend_stream.connect("127.0.0.1", seen["port"][0], 5, 1 << 17)
        await _until(lambda: conn.answered, "the server's early bytes")
        with pytest.raises(backend_stream.ClosedBeforeAnswer):
            await asyncio.wait_for(
                conn.request(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"), 5)
        await _until(lambda: conn.closed.done(), "the connection to close")
        assert seen["requests_on"] == []
