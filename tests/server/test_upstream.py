"""The proxy's keep-alive pool (server/upstream.py) against a small in-process tornado server:
connection reuse, what must not be reused, stale connections, streaming without buffering,
failures as ``UpstreamTransportError``, and shutdown closing in-flight requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest
from tornado import web
from tornado.httpserver import HTTPServer

from lemonade_jupyter.server import upstream as upstream_module
from lemonade_jupyter.server.upstream import UpstreamPool, UpstreamTransportError


class _Echo(web.RequestHandler):
    """Answers with the body and the client's source port (which connection carried it)."""

    def post(self) -> None:
        if self.get_query_argument("close", None):
            self.set_header("Connection", "close")
        port = self.request.connection.stream.socket.getpeername()[1]
        self.finish({"body": self.request.body.decode(), "peer_port": port,
                     "host": self.request.headers.get("Host")})


class _Stream(web.RequestHandler):
    """Sends ``n`` SSE events; after the first, waits until the test says go on."""

    async def post(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        state = self.application.settings["state"]
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


@contextlib.asynccontextmanager
async def _backend() -> AsyncIterator[tuple[int, dict[str, asyncio.Event]]]:
    """``(port, state)`` of a tornado server that drops idle connections after 0.3 s."""
    state = {"first_sent": asyncio.Event(), "go_on": asyncio.Event()}
    app = web.Application([(r"/echo", _Echo), (r"/stream", _Stream)], state=state)
    server = HTTPServer(app, idle_connection_timeout=0.3)
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
        assert first["host"] == f"127.0.0.1:{port}"
        assert pool.idle_count("127.0.0.1", port) == 1
        pool.close()
        assert pool.idle_count("127.0.0.1", port) == 0


async def test_concurrent_requests_use_separate_connections_then_pool_them():
    async with _backend() as (port, _):
        pool = UpstreamPool()
        answers = await asyncio.gather(*(_echo(pool, port, str(i).encode()) for i in range(5)))
        assert sorted(a["body"] for a in answers) == [str(i) for i in range(5)]
        assert len({a["peer_port"] for a in answers}) == 5
        assert pool.idle_count("127.0.0.1", port) == 5
        pool.close()


async def test_connection_close_answer_is_not_pooled():
    async with _backend() as (port, _):
        pool = UpstreamPool()
        first = await _echo(pool, port, query="?close=1")
        assert pool.idle_count("127.0.0.1", port) == 0
        second = await _echo(pool, port)
        assert first["peer_port"] != second["peer_port"]
        pool.close()


async def test_idle_connection_closed_by_the_backend_is_not_reused():
    async with _backend() as (port, _):  # the server drops idle connections after 0.3 s
        pool = UpstreamPool()
        first = await _echo(pool, port)
        await asyncio.sleep(0.6)
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


async def test_request_on_a_stale_reused_connection_is_resent_on_a_fresh_one(monkeypatch):
    """The race the peek cannot see: the backend closes just after the check."""
    async with _backend() as (port, _):
        pool = UpstreamPool()
        first = await _echo(pool, port)
        await asyncio.sleep(0.6)  # the server has closed it by now
        monkeypatch.setattr(upstream_module, "_looks_open", lambda stream: True)
        second = await _echo(pool, port, b"again")
        assert second["body"] == "again"
        assert second["peer_port"] != first["peer_port"]
        pool.close()


async def test_refused_connection_is_an_upstream_transport_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        pool = UpstreamPool()
        with pytest.raises(UpstreamTransportError, match="cannot connect"):
            await pool.post("127.0.0.1", port, "/echo", b"", {})
    assert pool._active == set()


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
        assert pool.idle_count("127.0.0.1", port) == 0  # we asked for Connection: close
        assert pool._active == set()


async def test_stream_read_to_the_end_goes_back_to_the_pool():
    async with _backend() as (port, state):
        state["go_on"].set()
        pool = UpstreamPool()
        resp = await pool.stream("127.0.0.1", port, "/stream?n=2", b"", {})
        assert await resp.read() == b"data: 0\n\ndata: 1\n\n"
        await resp.aclose()
        assert pool.idle_count("127.0.0.1", port) == 1
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
        assert pool.idle_count("127.0.0.1", port) == 0
        assert pool._active == set()


async def test_close_fails_a_stream_in_flight_at_once():
    """Shutdown must not wait for a backend that keeps streaming (it ignores SIGTERM then)."""
    async with _backend() as (port, state):
        pool = UpstreamPool()
        resp = await pool.stream("127.0.0.1", port, "/stream?n=3", b"", {})
        assert await resp.__anext__() == b"data: 0\n\n"
        pool.close()
        with pytest.raises(UpstreamTransportError):
            await asyncio.wait_for(resp.__anext__(), 2)
        await resp.aclose()
        assert pool._active == set()


async def test_cancelled_request_closes_its_connection():
    async with _backend() as (port, state):
        pool = UpstreamPool()
        task = asyncio.ensure_future(pool.post("127.0.0.1", port, "/stream?n=3", b"", {}))
        await asyncio.wait_for(state["first_sent"].wait(), 5)  # the answer has started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.idle_count("127.0.0.1", port) == 0
        assert pool._active == set()
