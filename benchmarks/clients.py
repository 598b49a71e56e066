"""Section 8: the candidates for the proxy's upstream client, side by side.

Each candidate does what the proxy needs from it, against the fast stand-in
(``benchmarks.fast_upstream``, a process of its own): a plain POST read whole over a kept
connection, and a streamed POST read chunk by chunk as the chunks come (the proxy's relay),
on a fresh connection each time (llama-server closes it after a stream). Measured in this
process, in thread CPU time, interleaved with the order rotating:

* ``UpstreamPool`` (``lemonade_jupyter/server/upstream.py``): what the proxy uses, aiohttp for
  plain requests and its own httptools reader for streams (``backend_stream.py``);
* aiohttp for streams too, as the proxy had it before (``ClientSession.post`` on a connection
  of its own);
* tornado's ``CurlAsyncHTTPClient`` (pycurl; chunks through its ``streaming_callback``; skipped
  when pycurl is not installed, it is no dependency);
* tornado's HTTP/1.1 parser on the hand-written pool the proxy used before
  (``benchmarks/tornado_pool.py``);
* httpx, the client before that;
* asyncio streams with the least HTTP a client can do (``proxy._RawHTTP``): a floor, no library.

Per streamed event at 1,000 tokens/s (one event per read, as from a GPU at c=1), per plain
request, and per short stream (two tokens on a fresh connection: what a stream costs before its
events, its request and the answer's head, connect included; the pool opens no connection ahead
here, so every candidate connects itself).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from .common import Context, Reps
from .procs import BenchmarkError, FastUpstream
from .proxy import _RawHTTP
from .report import Row

S8 = "8. Upstream clients"
PATH = "/v1/chat/completions"
ADOPTED = "UpstreamPool (adopted: aiohttp plain, httptools streams)"


class _Candidate:
    """``post`` returns the body; ``stream`` reads the answer chunk by chunk and returns the
    number of events."""

    label: str

    async def post(self, port: int, body: bytes, headers: dict[str, str]) -> bytes:
        raise NotImplementedError

    async def stream(self, port: int, body: bytes, headers: dict[str, str]) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class _Adopted(_Candidate):
    label = ADOPTED

    def __init__(self) -> None:
        from lemonade_jupyter.server.upstream import UpstreamPool

        self.pool = UpstreamPool(warm_streams=0)

    async def post(self, port: int, body: bytes, headers: dict[str, str]) -> bytes:
        r = await self.pool.post("127.0.0.1", port, PATH, body, headers)
        return r.body

    async def stream(self, port: int, body: bytes, headers: dict[str, str]) -> int:
        resp = await self.pool.stream("127.0.0.1", port, PATH, body, headers)
        events = 0
        try:
            while chunk := await resp.next_chunk():
                events += chunk.count(b"\n\n")
        finally:
            await resp.aclose()
        return events

    async def close(self) -> None:
        self.pool.close()


class _AiohttpStreams(_Candidate):
    """aiohttp as the proxy used it for streams before: a session whose connections are used
    once (llama-server closes them), no cookies, compression or automatic headers."""

    label = "aiohttp streams (the proxy's stream client before)"

    def __init__(self) -> None:
        self._sessions: dict[bool, Any] = {}

    def _session(self, once: bool) -> Any:
        import aiohttp

        if once not in self._sessions:
            self._sessions[once] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=once),
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0))
        return self._sessions[once]

    async def post(self, port: int, body: bytes, headers: dict[str, str]) -> bytes:
        async with self._session(False).post(f"http://127.0.0.1:{port}{PATH}", data=body,
                                             headers=headers) as r:
            return await r.read()  # type: ignore[no-any-return]

    async def stream(self, port: int, body: bytes, headers: dict[str, str]) -> int:
        events = 0
        async with self._session(True).post(f"http://127.0.0.1:{port}{PATH}", data=body,
                                            headers=headers) as r:
            while chunk := await r.content.readany():
                events += chunk.count(b"\n\n")
        return events

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()


class _TornadoPool(_Candidate):
    label = "tornado HTTP1Connection pool (the proxy's client before)"

    def __init__(self) -> None:
        from .tornado_pool import UpstreamPool

        self.pool = UpstreamPool()

    async def post(self, port: int, body: bytes, headers: dict[str, str]) -> bytes:
        r = await self.pool.post("127.0.0.1", port, PATH, body, headers)
        return r.body

    async def stream(self, port: int, body: bytes, headers: dict[str, str]) -> int:
        resp = await self.pool.stream("127.0.0.1", port, PATH, body, headers)
        events = 0
        try:
            async for chunk in resp:
                events += chunk.count(b"\n\n")
        finally:
            await resp.aclose()
        return events

    async def close(self) -> None:
        self.pool.close()


class _Curl(_Candidate):
    label = "tornado CurlAsyncHTTPClient (pycurl)"

    def __init__(self) -> None:
        from tornado.curl_httpclient import CurlAsyncHTTPClient

        self.client = CurlAsyncHTTPClient(force_instance=True, max_clients=64)

    def _request(self, port: int, body: bytes, headers: dict[str, str], **kw: Any) -> Any:
        from tornado.httpclient import HTTPRequest

        return HTTPRequest(f"http://127.0.0.1:{port}{PATH}", method="POST", body=body,
                           headers=headers, request_timeout=600, **kw)

    async def post(self, port: int, body: bytes, headers: dict[str, str]) -> bytes:
        answer = await self.client.fetch(self._request(port, body, headers))
        return answer.body  # type: ignore[no-any-return]

    async def stream(self, port: int, body: bytes, headers: dict[str, str]) -> int:
        """Chunks handed to an async reader, as the proxy would read them."""
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        waiter: list[asyncio.Future[None] | None] = [None]

        def arrived(chunk: bytes) -> None:
            chunks.append(chunk)
            if waiter[0] is not None and not waiter[0].done():
                waiter[0].set_result(None)

        done = asyncio.ensure_future(self.client.fetch(
            self._request(port, body, headers, streaming_callback=arrived)))
        events = 0
        while True:
            while chunks:
                events += chunks.pop(0).count(b"\n\n")
            if done.done():
                done.result()
                while chunks:
                    events += chunks.pop(0).count(b"\n\n")
                return events
            waiter[0] = loop.create_future()
            await asyncio.wait([waiter[0], done], return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        self.client.close()


class _Httpx(_Candidate):
    label = "httpx (the proxy's client before the pool)"

    def __init__(self) -> None:
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))

    async def post(self, port: int, body: bytes, headers: dict[str, str]) -> bytes:
        return (await self.client.post(f"http://127.0.0.1:{port}{PATH}", content=body,
                                       headers=headers)).content

    async def stream(self, port: int, body: bytes, headers: dict[str, str]) -> int:
        events = 0
        async with self.client.stream("POST", f"http://127.0.0.1:{port}{PATH}", content=body,
                                      headers=headers) as r:
            async for chunk in r.aiter_raw():
                events += chunk.count(b"\n\n")
        return events

    async def close(self) -> None:
        await self.client.aclose()


class _Raw(_Candidate):
    label = "asyncio streams, least HTTP (a floor, no library)"

    def __init__(self) -> None:
        self.raw: _RawHTTP | None = None

    def _client(self, port: int) -> _RawHTTP:
        if self.raw is None:
            self.raw = _RawHTTP(port)
        return self.raw

    async def post(self, port: int, body: bytes, headers: dict[str, str]) -> bytes:
        return await self._client(port).post(PATH, headers, body)

    async def stream(self, port: int, body: bytes, headers: dict[str, str]) -> int:
        return await self._client(port).stream(PATH, headers, body)

    async def close(self) -> None:
        if self.raw is not None:
            self.raw.close()


def _candidates() -> list[_Candidate]:
    found: list[_Candidate] = [_Adopted(), _AiohttpStreams(), _TornadoPool(), _Httpx(),
                               _Raw()]
    try:
        found.insert(1, _Curl())
    except ImportError:  # pycurl is no dependency
        pass
    return found


async def _measure(ctx: Context, up: FastUpstream) -> tuple[dict[str, dict[str, list[float]]],
                                                              list[str]]:
    plain = json.dumps({"model": "m", "messages": [], "max_tokens": 16}).encode()
    events = 100 if ctx.smoke else 300
    streamed = json.dumps({"model": "m", "messages": [], "max_tokens": events, "stream": True,
                           "x_tokens_per_s": 1000}).encode()
    headers = up.headers
    close = {**headers, "Connection": "close"}
    short = json.dumps({"model": "m", "messages": [], "max_tokens": 2, "stream": True,
                        "x_tokens_per_s": 1000}).encode()
    cands = _candidates()
    out = {c.label: {"plain": [], "event": [], "short": []} for c in cands}
    reps = ctx.reps(Reps(5, 8, 40), Reps(2, 2, 0))
    n = 10 if ctx.smoke else 50
    try:
        for c in cands:  # warm-up: connections, first-call paths
            for _ in range(5):
                await c.post(up.port, plain, headers)
            await c.stream(up.port, streamed, close)
        started = time.monotonic()
        for i in range(reps.max):
            if i >= reps.min and time.monotonic() - started > reps.budget_s:
                break
            order = cands[i % len(cands):] + cands[:i % len(cands)]
            for c in order:
                t0 = time.thread_time()
                for _ in range(n):
                    await c.post(up.port, plain, headers)
                out[c.label]["plain"].append((time.thread_time() - t0) * 1000 / n)
            for c in order:
                t0 = time.thread_time()
                got = await c.stream(up.port, streamed, close)
                if got != events + 2:  # the content events, the final one, [DONE]
                    raise BenchmarkError(f"{c.label}: {got} events, expected {events + 2}")
                out[c.label]["event"].append((time.thread_time() - t0) * 1000 / got)
            for c in order:
                t0 = time.thread_time()
                for _ in range(n):
                    if await c.stream(up.port, short, close) != 4:
                        raise BenchmarkError(f"{c.label}: a short stream lost events")
                out[c.label]["short"].append((time.thread_time() - t0) * 1000 / n)
    finally:
        for c in cands:
            await c.close()
    return out, [c.label for c in cands]


def run_clients(ctx: Context) -> None:
    root = ctx.tmp / "clients"
    root.mkdir(parents=True, exist_ok=True)
    up = FastUpstream(root)
    up.start()
    try:
        got, labels = asyncio.run(_measure(ctx, up))
    finally:
        up.stop()
    ctx.raw["clients_cpu_ms"] = got
    if not any("pycurl" in label for label in labels):
        ctx.notes.append("Section 8: pycurl is not installed, so CurlAsyncHTTPClient was not "
                         "measured (pip install pycurl).")
    adopted = got[ADOPTED]
    for what, figure, note in (
            ("event", "client CPU per streamed event, 1,000 tok/s",
             "one stream of events at 1,000 tok/s read chunk by chunk, / its events"),
            ("plain", "client CPU per plain request",
             "POST of a 16-token chat, answer read whole, kept connection"),
            ("short", "client CPU per short stream",
             "a 2-token stream on a fresh connection (connect, request, head, 4 events)")):
        for label in labels[1:]:
            ctx.add(Row(S8, f"{figure}: vs {label.split(' (')[0]}", "ms", ADOPTED,
                        adopted[what], label, got[label][what], "median",
                        note=f"in the benchmark process, thread CPU time; {note}"))
    ctx.sample_load()

