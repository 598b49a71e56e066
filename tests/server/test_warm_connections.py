"""Connections opened ahead of a backend's next stream (server/warm_connections.py).

Against a loopback backend that behaves like llama-server (closes the connection after a
stream) and notes when it accepted each connection and what came on it: a stream after the
first goes on a connection accepted before the stream was asked for; the number kept is bounded;
one the backend closed is never used (and a request on one closed just as it went out is resent
on a fresh connection, without a failure); kept connections close after ``idle_s``, with the
pool, and with their backend. The last test does the same through a real Jupyter server, with
``benchmarks/fast_upstream.py`` as the backend, and unloads the model."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lemonade_jupyter.server.upstream import UpstreamPool
from tests.helpers.http import API
from tests.helpers.polling import wait_until

STAND_IN = Path(__file__).resolve().parents[2] / "benchmarks" / "fast_upstream.py"


class _Backend:
    """What the loopback backend saw, and switches the test pulls."""

    def __init__(self) -> None:
        self.port = 0
        #: Per connection, in accept order: when it was accepted (loop time), the requests it
        #: carried, and whether it is closed.
        self.accepted: list[float] = []
        self.requests: list[int] = []  # the connection number of each request
        self.closed: set[int] = set()
        #: The next request read is answered by closing its connection (a backend that closed
        #: the connection just as the request went out).
        self.drop_next_request = False
        self.writers: dict[int, asyncio.StreamWriter] = {}

    def open_connections(self) -> set[int]:
        return set(range(len(self.accepted))) - self.closed

    def unused(self) -> set[int]:
        return self.open_connections() - set(self.requests)

    def close_unused(self) -> None:
        """Close every connection no request came on (as llama-server's keep-alive timeout)."""
        for number in self.unused():
            self.writers[number].close()


@contextlib.asynccontextmanager
async def _backend() -> AsyncIterator[_Backend]:
    """A backend that streams three SSE events on ``/stream`` and then closes the connection,
    as llama-server does."""
    seen = _Backend()
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(seen.accepted)
        seen.accepted.append(loop.time())
        seen.writers[number] = writer
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            seen.requests.append(number)
            if seen.drop_next_request:
                seen.drop_next_request = False
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(3):
                event = b"data: %d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            seen.closed.add(number)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen.port = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        for writer in seen.writers.values():
            writer.close()
        server.close()
        await server.wait_closed()


async def _stream(pool: UpstreamPool, port: int) -> bytes:
    resp = await pool.stream("127.0.0.1", port, "/stream", b"{}", {"Connection": "close"})
    try:
        assert resp.code == 200
        return await resp.read()
    finally:
        await resp.aclose()


async def _kept(pool: UpstreamPool, port: int, n: int = 1) -> None:
    await wait_until(lambda: pool.warm.count(("127.0.0.1", port)) == n, timeout=10,
                     what=f"{n} connection(s) kept for the next stream")


async def test_a_stream_goes_on_a_connection_opened_before_it_was_asked_for():
    async with _backend() as seen:
        pool = UpstreamPool()
        loop = asyncio.get_running_loop()
        asked = []
        for _ in range(4):
            asked.append(loop.time())
            assert await _stream(pool, seen.port) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            await _kept(pool, seen.port)
        # Each stream had a connection of its own; every one after the first had been
        # accepted before that stream was asked for (opened as the stream before it ended).
        assert seen.requests == [0, 1, 2, 3]
        for i in (1, 2, 3):
            assert seen.accepted[i] < asked[i]
        assert pool.warm.used == 3
        assert len(seen.accepted) == 5  # the four streams' and one for the next stream
        pool.close()


async def test_no_connection_is_opened_ahead_when_warm_streams_is_0():
    async with _backend() as seen:
        pool = UpstreamPool(warm_streams=0)
        for _ in range(3):
            await _stream(pool, seen.port)
            assert pool.warm.opening() == 0 and pool.warm.count() == 0
        assert len(seen.accepted) == 3 and pool.warm.used == 0
        pool.close()


async def test_at_most_warm_streams_connections_are_kept_per_backend():
    async with _backend() as seen:
        pool = UpstreamPool(warm_streams=2)
        await asyncio.gather(*(_stream(pool, seen.port) for _ in range(6)))
        await _kept(pool, seen.port, 2)
        # Six streams ended, each asking for one more; two were opened.
        assert len(seen.accepted) == 6 + 2
        await asyncio.gather(*(_stream(pool, seen.port) for _ in range(3)))
        await _kept(pool, seen.port, 2)
        assert pool.warm.used == 2  # two of the three found one kept; the third connected
        assert len(seen.accepted) <= 6 + 2 + 1 + 2
        assert len(seen.unused()) == 2
        pool.close()


async def test_a_kept_connection_the_backend_closed_is_dropped_and_never_used():
    async with _backend() as seen:
        pool = UpstreamPool(idle_s=60)  # not dropped for being idle while the test runs
        await _stream(pool, seen.port)
        await _kept(pool, seen.port)
        seen.close_unused()  # llama-server's keep-alive timeout, or its exit
        await _kept(pool, seen.port, 0)  # dropped as soon as its end closed
        assert await _stream(pool, seen.port)  # no failure: it went on a new connection
        assert pool.warm.used == 0
        assert seen.requests == [0, 2]  # nothing came on the closed connection (number 1)
        pool.close()


async def test_a_stream_on_a_kept_connection_closed_as_it_went_out_is_resent_on_a_fresh_one():
    """The race the store cannot see: the backend closes the connection just as the stream's
    request goes out on it. The backend never answered it, so it is sent again, once."""
    async with _backend() as seen:
        pool = UpstreamPool()
        await _stream(pool, seen.port)
        await _kept(pool, seen.port)
        seen.drop_next_request = True
        assert await _stream(pool, seen.port) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert pool.warm.used == 1
        # The request came on the kept connection (1), was dropped, and came again on a fresh
        # one (2); the stream's end opened the next (3).
        assert seen.requests == [0, 1, 2]
        pool.close()


async def test_a_kept_connection_is_closed_after_idle_s():
    async with _backend() as seen:
        pool = UpstreamPool(idle_s=0.2)
        await _stream(pool, seen.port)
        await _kept(pool, seen.port)
        await wait_until(lambda: not seen.open_connections(), timeout=5,
                         what="the kept connection to be closed after idle_s")
        assert pool.warm.count() == 0 and pool.warm.used == 0
        pool.close()


async def test_close_closes_kept_connections():
    async with _backend() as seen:
        pool = UpstreamPool()
        await _stream(pool, seen.port)
        await _kept(pool, seen.port)
        pool.close()
        assert pool.warm.count() == 0
        await wait_until(lambda: not seen.open_connections(), timeout=5,
                         what="the backend to see the kept connection closed")
        assert pool.warm.used == 0


async def test_a_stream_cut_by_close_opens_no_connection_ahead():
    """The server is stopping: its backends are about to stop too."""
    async with _backend() as seen:
        pool = UpstreamPool()
        resp = await pool.stream("127.0.0.1", seen.port, "/stream", b"{}", {})
        pool.close()
        await resp.aclose()
        assert pool.warm.opening() == 0 and pool.warm.count() == 0
        await _stream(pool, seen.port)  # the pool still works, and opens ahead again
        assert pool.warm.opening() == 1
        await _kept(pool, seen.port)
        pool.close()


async def test_an_opening_that_fails_is_dropped_quietly():
    async with _backend() as seen:
        port = seen.port
    pool = UpstreamPool()
    pool.open_ahead("127.0.0.1", port)  # nothing listens there any more: refused
    assert pool.warm.opening() == 1
    await wait_until(lambda: pool.warm.opening() == 0, timeout=5, what="the opening to end")
    assert pool.warm.count() == 0
    pool.close()


# ---------------------------------------------------------------- through a real Jupyter server
@pytest.fixture
def lemonade_traits(request, tmp_path) -> dict[str, Any]:
    """The real llama-server, or (parametrized ``"stand-in"``) the benchmarks' stand-in."""
    if getattr(request, "param", None) != "stand-in":
        return {}
    path = tmp_path / "fast-upstream-server"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    path.chmod(0o755)
    return {"llama_server_path": str(path)}


def _sockets_at(local: tuple[str, int]) -> list[Any]:
    """This process's TCP sockets bound to ``local`` (the test runs the Jupyter server's loop):
    a socket shows here while its file descriptor is open."""
    return [c for c in psutil.Process().net_connections(kind="tcp")
            if c.laddr and (c.laddr.ip, c.laddr.port) == local]


@pytest.mark.parametrize("lemonade_traits", ["stand-in"], indirect=True)
async def test_streams_through_the_proxy_take_connections_opened_ahead_and_unload_closes_them(
    lemonade, api, server_url, token, default_model_name
):
    await api.load(default_model_name)
    live = lemonade.router.get_live(default_model_name)
    assert live is not None and live.backend is not None
    port = live.backend.port
    pool = lemonade.services.upstream
    pool.warm.idle_s = 60.0  # kept until the backend goes (not dropped for being idle)
    body = {"model": default_model_name, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5, "stream": True, "x_tokens_per_s": 1e6}
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(3):
            r = await http.post(f"{server_url}{API}/chat/completions", json=body,
                                headers={"Authorization": f"token {token}"})
            assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
            await _kept(pool, port)
    assert pool.warm.used == 2
    (kept,) = pool.warm.kept(("127.0.0.1", port))
    assert kept.transport is not None
    local = kept.transport.get_extra_info("sockname")[:2]
    assert [c.status for c in _sockets_at(local)] == [psutil.CONN_ESTABLISHED]
    answer = await api.post(f"{API}/unload", {"model_name": default_model_name})
    assert answer.code == 200, answer.body
    # The backend's exit closes the kept connection: dropped, its socket closed (no fd left).
    await wait_until(lambda: pool.warm.count() == 0 and not _sockets_at(local),
                     timeout=30, what="the kept connection to close with its backend")


async def test_llama_server_answers_streams_on_connections_opened_ahead(
    lemonade, api, server_url, token, default_model_name
):
    """The real engine: a connection it accepted earlier, with no request yet, carries the next
    stream whole (llama-server waits for a request on it, and closes it after the stream)."""
    await api.load(default_model_name)
    live = lemonade.router.get_live(default_model_name)
    assert live is not None and live.backend is not None
    pool = lemonade.services.upstream
    body = {"model": default_model_name, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4, "stream": True}
    async with httpx.AsyncClient(timeout=120) as http:
        for _ in range(3):
            r = await http.post(f"{server_url}{API}/chat/completions", json=body,
                                headers={"Authorization": f"token {token}"})
            assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
            assert b'"error"' not in r.content
            await _kept(pool, live.backend.port)
    assert pool.warm.used == 2
