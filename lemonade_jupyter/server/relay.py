"""The relay of an engine's answer to the client, one for local backends and remote replicas.

A plain answer is written whole, ``"model"`` renamed to the name the client asked for, or an
engine's error answer mapped into our envelope (``answers.py``). A streamed answer is written
and flushed as it arrives, the events that arrived together in one write, never held back for
more; before the next write the previous flush must have gone out (the backpressure: a client
that reads slowly slows the engine). ``: ping`` comments keep a silent stream open (a cold
load, a long prefill, a replica that takes its time). Once SSE headers went out, an error is an
SSE error event; before that it is a normal answer.

:class:`AnswerRelay` writes through the handler's public ``RequestHandler`` methods only and
keeps what the request's retry decisions need: whether the headers went out, and whether any
of the answer reached the client (after that a replay would repeat tokens).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from tornado.iostream import StreamClosedError

from ..errors import LemonadeError
from .answers import ClientGone, Renamer, upstream_error
from .upstream import UpstreamResponse

if TYPE_CHECKING:
    from .base import LemonadeHandler

T = TypeVar("T")
#: Bytes at the end of a plain answer where the engine's ``timings`` are (its last key).
STATS_TAIL_BYTES = 4096


class StreamedAnswer(Protocol):
    """A streamed answer as the relay reads it: a local backend's (``upstream.UpstreamStream``)
    or a replica's (``remote_upstream.RemoteStream``). A chunk is everything that arrived since
    the last one, cut anywhere; ``b""`` is the end; a failure raises the caller's error."""

    code: int

    def __aiter__(self) -> StreamedAnswer: ...

    async def __anext__(self) -> bytes: ...

    async def next_chunk(self) -> bytes: ...

    def arrived(self) -> bytes: ...

    async def read(self) -> bytes: ...


class StatsSink(Protocol):
    """Where the engine's ``timings`` go (``RequestStats.record`` for the proxied route)."""

    def __call__(self, model: str, tail: bytes) -> None: ...


def _same(body: bytes) -> bytes:
    return body


class AnswerRelay:
    """Writes one request's answer to its client; see the module docstring."""

    def __init__(self, handler: LemonadeHandler, ping_interval: float,
                 record: StatsSink | None = None) -> None:
        self._handler = handler
        self.ping_interval = ping_interval
        #: Called with the answer's last bytes when the route's answers carry ``timings``.
        self._record = record
        #: SSE headers went out: an error now is an SSE event, not a status.
        self.headers_sent = False
        #: Part of the answer (not a ping, not loading news) reached the client.
        self.data_sent = False

    # ------------------------------------------------------------------ plain answers
    def plain(self, resp: UpstreamResponse, model: str,
              clean: Callable[[bytes], bytes] = _same, *, stats: bool = True) -> None:
        """Write a whole answer, or its error in our envelope (``clean`` edits an error's body
        first). ``stats``: the answer's ``timings`` feed the request statistics."""
        if resp.code >= 400:
            status, err = upstream_error(resp.code, clean(resp.body))
            self._handler.write_json(err, status)
            return
        if stats and self._record is not None:
            self._record(model, resp.body[-STATS_TAIL_BYTES:])
        self._handler.set_status(resp.code)
        self._handler.finish(Renamer(model)(resp.body))

    # ------------------------------------------------------------------ streamed answers
    async def stream(self, resp: StreamedAnswer, model: str,
                     clean: Callable[[bytes], bytes] = _same) -> None:
        """Relay a streamed answer, or its error answer in our shape."""
        if resp.code >= 400:
            status, err = upstream_error(resp.code, clean(await resp.read()))
            if not self.headers_sent:
                self._handler.write_json(err, status)
            else:
                await self.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                self._handler.finish()
            return
        first = await self._first_with_pings(resp)
        if first is not None:
            self.commit_headers()
            await self._relay(first, resp, model)
        self._handler.finish()

    async def _first_with_pings(self, chunks: StreamedAnswer) -> bytes | None:
        """The first chunk, pinging while the engine is silent (prefill); taken at once when
        it came with the headers (no task, wait or timer for the pings)."""
        first = chunks.arrived()
        if first:
            return first
        nxt = asyncio.ensure_future(chunks.__anext__())
        try:
            return await self.pinging(nxt)
        except StopAsyncIteration:
            return None
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _relay(self, first: bytes, chunks: StreamedAnswer, model: str) -> None:
        """Pass the events on as they complete, ``model`` renamed, everything that arrived in one
        write; the previous write must have gone out before the next one starts."""
        handler = self._handler
        rename = Renamer(model)
        pending = b""
        # The last two blocks written, kept by reference for the request statistics: the
        # engine's ``timings`` are in the last event before ``[DONE]``.
        before_last = last = b""
        flushed: asyncio.Future[None] | None = None
        chunk = first
        try:
            while chunk:
                pending += chunk
                cut = pending.rfind(b"\n\n") + 2
                if cut >= 2:
                    ready, pending = pending[:cut], pending[cut:]
                    before_last, last = last, ready
                    handler.write(rename(ready))
                    if flushed is not None:
                        await flushed
                    flushed = handler.flush()
                    self.data_sent = True
                chunk = await chunks.next_chunk()
            if pending:
                handler.write(pending)
                if flushed is not None:
                    await flushed
                flushed = handler.flush()
            if flushed is not None:
                await flushed
        except StreamClosedError as exc:
            raise ClientGone() from exc
        finally:
            # Also when the client left or was cancelled after the last event: a client that
            # hangs up on ``[DONE]`` (before the backend's end of stream) still had its answer.
            if self._record is not None:
                self._record(model, before_last + last + pending)

    # ------------------------------------------------------------------ pings and errors
    async def pinging(self, task: asyncio.Future[T]) -> T:
        """``task``'s result, with a ``: ping`` comment after every ``ping_interval`` of
        waiting (the caller deals with a task it leaves unfinished)."""
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.ping_interval)
            if done:
                return task.result()
            await self.ping()

    async def with_pings(self, work: Awaitable[T]) -> T:
        """Await ``work``, pinging while it takes long; cancel it if we leave first."""
        task = asyncio.ensure_future(work)
        try:
            return await self.pinging(task)
        finally:
            if not task.done():
                task.cancel()

    def commit_headers(self) -> None:
        if self.headers_sent:
            return
        self.headers_sent = True
        self._handler.set_status(200)
        self._handler.set_event_stream_headers()

    async def write(self, data: bytes) -> None:
        """Write and flush ``data`` as part of the event stream (headers first)."""
        self.commit_headers()
        try:
            self._handler.write(data)
            await self._handler.flush()
        except StreamClosedError as exc:
            raise ClientGone() from exc

    async def ping(self) -> None:
        await self.write(b": ping\n\n")

    async def fail(self, exc: LemonadeError) -> None:
        """Before the first byte: a normal error answer (raised); after it: an SSE error event."""
        if not self.headers_sent:
            raise exc
        try:
            await self.write(b"data: " + json.dumps(exc.to_body()).encode() + b"\n\n")
            self._handler.finish()
        except ClientGone:
            pass
