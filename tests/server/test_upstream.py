"""The proxy's upstream client (server/upstream.py) against small in-process servers: connection
reuse, what must not be reused, stale connections, streaming without buffering, backpressure,
failures as ``UpstreamTransportError``, and shutdown closing in-flight requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tornado import web
from tornado.httpserver import HTTPServer

from lemonade_jupyter.errors import BackendTransportError
from lemonade_jupyter.server.upstream import UpstreamPool, UpstreamTransportError

FLOOD_CHUNK = 256 * 1024
FLOOD_CHUNKS = 64  # 16 MiB: far more than the socket buffers of a reader that stopped reading


def _peer_port(handler: web.RequestHandler) -> int:
    return int(handler.request.connection.stream.socket.getpeername()[1])


class _Echo(web.RequestHandler):
    """Answers with the body, the request's headers and which connection carried it."""

    def post(self) -> None:
        if self.get_query_argument("close", None):
            self.set_header("Connection", "close")
        self.finish({"body": self.request.body.decode(), "peer_port": _peer_port(self),
                     "headers": dict(self.request.headers)})


class _Stream(web.RequestHandler):
    """Sends ``n`` SSE events; after the first, waits until the test says go on."""

    async def post(self) -> None:
        state = self.application.settings["state"]
        state["stream_ports"].append(_peer_port(self))
        self.set_header("Content-Type", "text/event-stream")
        for i in range(int(self.get_query_argument("n", "3"))):
            self.write(f"data: {i}\n\n")
            await self.flush()
            if i == 0:
                state["first_sent"].set()
                await state["go_on"].wait()
        if self.get_query_argument("die", None):
            self.request.connection.stream.close()  # mid-answer, no terminating chunk
            return
        self.finish()

    def on_connection_close(self) -> None:
        self.application.settings["state"]["closed"].set()


class _Flood(web.RequestHandler):
    """Writes FLOOD_CHUNKS chunks as fast as the client takes them, counting what went out."""

    async def post(self) -> None:
        state = self.application.settings["state"]
        for _ in range(FLOOD_CHUNKS):
            self.write(b"x" * FLOOD_CHUNK)
            await self.flush()  # returns once the chunk is in the socket
            state["flushed"] += 1
        self.finish()


class _Silent(web.RequestHandler):
    """Never answers (says when it has the request)."""

    async def post(self) -> None:
        self.application.settings["state"]["silent_got"].set()
        await asyncio.Event().wait()


class _ClosingServer(HTTPServer):
    """Counts the connections the server itself has closed (idle timeout included)."""

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.state["server_closed"] += 1


async def _until(check: Any, what: str, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _until_steady(read: Any, quiet: float = 0.2, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``read()`` has not changed for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    deadline, value, since = loop.time() + timeout, read(), loop.time()
    while loop.time() - since < quiet:
        assert loop.time() < deadline, "the value never settled"
        await asyncio.sleep(0.02)
        if read() != value:
            value, since = read(), loop.time()


@contextlib.asynccontextmanager
async def _backend() -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """``(port, state)`` of a tornado server that drops idle connections after 0.3 s."""
    state: dict[str, Any] = {"first_sent": asyncio.Event(), "go_on": asyncio.Event(),
                             "closed": asyncio.Event(), "flushed": 0, "stream_ports": [],
                             "silent_got": asyncio.Event(), "server_closed": 0}
    app = web.Application([(r"/echo", _Echo), (r"/stream", _Stream), (r"/flood", _Flood),
                           (r"/silent", _Silent)], state=state)
    server = _ClosingServer(app, idle_connection_timeout=0.3)
    server.state = state
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server.add_sockets([sock])
    try:
        yield sock.getsockname()[1], state
    finally:
        server.stop()
        await server.close_all_connections()


@contextlib.asynccontextmanager
async def _raw_backend(stale: bool = False) -> AsyncIterator[dict[str, Any]]:
    """A server that keeps every connection alive whatever the client asks (as llama-server
    advertises after a stream) and answers with the number of the connection that carried the
    request: plain, or as a chunked stream for ``/stream``.

    ``stale``: a second request on a connection is not answered, the connection is closed: the
    race of a pooled connection that the backend closed just as the client reused it."""
    seen: dict[str, Any] = {"connections": 0, "requests": 0, "port": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        number, served = seen["connections"], 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                seen["requests"] += 1
                if stale and served:
                    return  # a request on a reused connection: closed without an answer
                served += 1
                body = json.dumps({"connection": number}).encode()
                if head.startswith(b"POST /stream "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                                 % (len(body), body))
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen["port"] = server.sockets[0].getsockname()[1]
    async with server:
        yield seen


async def _echo(pool: UpstreamPool, port: int, body: bytes = b"hi", query: str = "") -> dict:
    resp = await pool.post("127.0.0.1", port, "/echo" + query, body,
                           {"Content-Type": "text/plain"})
    assert resp.code == 200
    return json.loads(resp.body)


async def test_sequential_requests_share_one_connection():
    async with _backend() as (port, _):
        pool = UpstreamPool()
        first = await _echo(pool, port, b"one")
        second = await _echo(pool, port, b"two")
        assert (first["body"], second["body"]) == ("one", "two")
        assert first["peer_port"] == second["peer_port"]
        assert first["headers"]["Host"] == f"127.0.0.1:{port}"
        pool.close()
        third = await _echo(pool, port, b"three")  # close() dropped it; the pool still works
        assert third["peer_port"] != first["peer_port"]
        pool.close()


async def test_no_header_of_its_own_that_changes_the_answer():
    """No Accept-Encoding: the proxy passes the backend's bytes on as they are."""
    async with _backend() as (port, _):
        pool = UpstreamPool()
        headers = (await _echo(pool, port))["headers"]
        assert "Accept-Encoding" not in headers
        assert headers["Content-Type"] == "text/plain"
        pool.close()


async def test_concurrent_requests_use_separate_connections_then_pool_them():
    async with _backend() as (port, _):
        pool = UpstreamPool()
        answers = await asyncio.gather(*(_echo(pool, port, str(i).encode()) for i in range(5)))
        assert sorted(a["body"] for a in answers) == [str(i) for i in range(5)]
        ports = {a["peer_port"] for a in answers}
        assert len(ports) == 5
        again = await asyncio.gather(*(_echo(pool, port) for _ in range(5)))
        assert {a["peer_port"] for a in again} == ports
        pool.close()


async def test_connection_close_answer_is_not_pooled():
    async with _backend() as (port, _):
        pool = UpstreamPool()
        first = await _echo(pool, port, query="?close=1")
        second = await _echo(pool, port)
        assert first["peer_port"] != second["peer_port"]
        pool.close()


async def test_idle_connection_closed_by_the_backend_is_not_reused():
    async with _backend() as (port, state):  # the server drops idle connections after 0.3 s
        pool = UpstreamPool()
        first = await _echo(pool, port)
        await _until(lambda: state["server_closed"] == 1, "the backend to drop the idle connection")
        second = await _echo(pool, port)
        assert second["peer_port"] != first["peer_port"]
        pool.close()


async def test_connection_older_than_idle_s_is_dropped():
    async with _backend() as (port, _):
        pool = UpstreamPool(idle_s=0.05)
        first = await _echo(pool, port)
        await asyncio.sleep(0.1)
        second = await _echo(pool, port)
        assert second["peer_port"] != first["peer_port"]
        pool.close()


async def test_request_on_a_stale_reused_connection_is_resent_on_a_fresh_one():
    async with _raw_backend(stale=True) as seen:
        pool = UpstreamPool()
        first = await pool.post("127.0.0.1", seen["port"], "/", b"a", {})
        second = await pool.post("127.0.0.1", seen["port"], "/", b"b", {})
        assert (first.code, second.code) == (200, 200)
        assert json.loads(first.body) == {"connection": 1}
        # The second went out on the pooled connection, which the backend closed unanswered,
        # then once more on a fresh connection.
        assert json.loads(second.body) == {"connection": 2}
        assert (seen["connections"], seen["requests"]) == (2, 3)
        pool.close()


async def test_refused_connection_is_an_upstream_transport_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        pool = UpstreamPool()
        for send in (pool.post, pool.stream):
            with pytest.raises(UpstreamTransportError, match="cannot connect") as info:
                await send("127.0.0.1", port, "/echo", b"", {})
            assert isinstance(info.value, BackendTransportError)  # what Router.call replays
        pool.close()


async def test_stream_hands_over_chunks_as_they_come():
    async with _backend() as (port, state):
        pool = UpstreamPool()
        resp = await pool.stream("127.0.0.1", port, "/stream?n=3", b"", {"Connection": "close"})
        assert resp.code == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        # The server holds back events 1 and 2 until we have event 0: no buffering in between.
        first = await asyncio.wait_for(resp.__anext__(), 5)
        assert first == b"data: 0\n\n"
        state["go_on"].set()
        rest = b"".join([chunk async for chunk in resp])
        assert rest == b"data: 1\n\ndata: 2\n\n"
        await resp.aclose()
        pool.close()


async def test_a_streams_connection_is_never_reused():
    """llama-server closes the connection after a stream while advertising keep-alive: neither
    the next stream nor a plain request may go on it."""
    async with _raw_backend() as seen:
        pool = UpstreamPool(warm_streams=0)  # numbered in order (test_warm_connections: ahead)
        numbers = []
        for send in ("stream", "post", "stream", "post"):
            if send == "stream":
                resp = await pool.stream("127.0.0.1", seen["port"], "/stream", b"", {})
                numbers.append(json.loads(await resp.read())["connection"])
                await resp.aclose()
            else:
                answer = await pool.post("127.0.0.1", seen["port"], "/", b"", {})
                numbers.append(json.loads(answer.body)["connection"])
        # Plain requests share one connection; each stream had its own.
        assert numbers == [1, 2, 3, 2]
        pool.close()


async def test_a_slow_reader_holds_the_backend_back():
    """Backpressure: while nobody takes the chunks, the backend's writes stop going out."""
    async with _backend() as (port, state):
        pool = UpstreamPool()
        resp = await pool.stream("127.0.0.1", port, "/flood", b"", {})
        received = len(await resp.__anext__())
        await _until_steady(lambda: state["flushed"])  # every buffer on the way is full
        assert state["flushed"] < FLOOD_CHUNKS // 2
        async for chunk in resp:
            received += len(chunk)
        assert received == FLOOD_CHUNK * FLOOD_CHUNKS
        assert state["flushed"] == FLOOD_CHUNKS
        await resp.aclose()
        pool.close()


async def test_stream_cut_by_the_backend_raises_mid_answer():
    async with _backend() as (port, state):
        pool = UpstreamPool()
        resp = await pool.stream("127.0.0.1", port, "/stream?n=2&die=1", b"", {})
        assert await resp.__anext__() == b"data: 0\n\n"
        state["go_on"].set()  # the server sends one more event, then drops the connection
        with pytest.raises(UpstreamTransportError, match="mid-answer"):
            async for chunk in resp:
                # Whether the last event beats the reset is up to TCP; nothing else may come.
                assert chunk == b"data: 1\n\n"
        await resp.aclose()
        pool.close()


async def test_close_fails_a_stream_in_flight_at_once():
    """Shutdown must not wait for a backend that keeps streaming (it ignores SIGTERM then)."""
    async with _backend() as (port, state):
        pool = UpstreamPool()
        resp = await pool.stream("127.0.0.1", port, "/stream?n=3", b"", {})
        assert await resp.__anext__() == b"data: 0\n\n"
        pool.close()
        with pytest.raises(UpstreamTransportError):
            await asyncio.wait_for(resp.__anext__(), 2)
        await asyncio.wait_for(state["closed"].wait(), 2)  # the backend saw it go
        await resp.aclose()


@pytest.mark.parametrize("streamed", [False, True])
async def test_close_fails_a_request_waiting_for_its_answer_at_once(streamed):
    async with _backend() as (port, state):
        pool = UpstreamPool()
        send = pool.stream if streamed else pool.post
        task = asyncio.ensure_future(send("127.0.0.1", port, "/silent", b"", {}))
        await asyncio.wait_for(state["silent_got"].wait(), 5)  # sent; it never answers
        assert not task.done()
        pool.close()
        with pytest.raises(UpstreamTransportError):
            await asyncio.wait_for(task, 2)


async def test_cancelled_request_closes_its_connection():
    async with _backend() as (port, state):
        pool = UpstreamPool()
        task = asyncio.ensure_future(pool.post("127.0.0.1", port, "/stream?n=3", b"", {}))
        await asyncio.wait_for(state["first_sent"].wait(), 5)  # the answer has started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(state["closed"].wait(), 2)  # the backend saw it go
        pool.close()
