"""The inference proxy: every route of the engine that serves a model (``engine_routes.py``).

OpenAI's chat, completions, embeddings and Responses API, Anthropic's messages, reranking,
infill, tokenizing and the chat template all go through here. Each request takes a lease on
its model (auto-loading it, with the same 409 as ``/load`` when its
pool is all pinned), is forwarded with the backend's API key (``upstream.py``: aiohttp, keep-alive
connections for plain requests), and holds the lease until the answer (or the whole stream) is
done, so a busy model is never evicted.

Streaming: whatever has arrived from the backend is written and flushed at once, events that
arrived together in one write, never held back for more; before the next write the previous
flush must have gone out (the backpressure: a client that reads slowly slows the backend). The
events pass through as bytes: only the ``"model"`` field is rewritten to the name the client
asked for (llama-server names its GGUF path), on the bytes, through JSON only for an event
whose ``"model"`` is not a plain string field. ``: ping`` comments keep the connection alive
while a cold load or a long prefill keeps it silent; a client that goes away cancels the pump,
which closes the backend request so llama-server stops generating.

Backend death: a non-streaming request is replayed once on a reloaded backend; a stream is
replayed only if no data reached the client yet, else it ends with an SSE error event.

Request statistics: the engine's ``timings`` are read from the answer's last bytes only (the
end of a plain answer, the last blocks of a stream), so the relay itself stays byte-level.
A streaming chat request that waits for a cold load may tell the load's progress first
(``loading_state.py``, opt-in).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..core.events import Event
from ..core.lifecycle import ModelState
from ..core.router import Lease
from ..errors import InvalidRequestError, LemonadeError
from . import loading_state
from .base import LemonadeHandler
from .engine_routes import CHAT, EngineRoute, body_for_engine
from .answers import ClientGone, Renamer, upstream_error
from .openai_checks import check_request
from .remote_proxy import RemoteForwarding
from .upstream import ChunkStream, UpstreamPool, UpstreamResponse

T = TypeVar("T")

#: Default seconds of silence before a ``: ping`` comment (c.LemonadeApp.sse_ping_interval_s).
DEFAULT_PING_INTERVAL_S = 2.0
#: Bytes at the end of a plain answer where the engine's ``timings`` are (its last key).
STATS_TAIL_BYTES = 4096


class OpenAIProxyHandler(RemoteForwarding, LemonadeHandler):
    """Forwards one POST to an engine route of the model's backend (or a remote model's
    replica)."""

    route: EngineRoute

    def initialize(self, route: EngineRoute) -> None:
        self.route = route
        self.upstream_path = route.path
        #: What goes to the engine: the client's body, or it with the default length.
        self._engine_body = b""
        self._pump: asyncio.Task[None] | None = None
        self._headers_sent = False
        self._data_sent = False

    @property
    def upstream(self) -> UpstreamPool:
        return self.settings["lemonade_upstream"]  # type: ignore[no-any-return]

    @property
    def ping_interval(self) -> float:
        return float(self.settings.get("lemonade_ping_interval_s", DEFAULT_PING_INTERVAL_S))

    def on_connection_close(self) -> None:
        """The client went away: stop pumping, which closes the backend request."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("Parameter 'model' is required", param="model")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequestError("Parameter 'stream' must be a boolean", param="stream")
        if model in self.router.remote:  # a remote model: no lease, its replicas (remote_proxy)
            await self.forward_remote(model, body, stream and self.route.streams)
            return
        # Unknown model (404) or a body it cannot serve (400): refused before any auto-load.
        check_request(self.upstream_path, self.router.catalog.get(self.router.resolve(model)),
                      body)
        self._engine_body = body_for_engine(self.route, body, self.request.body,
                                            self.router.settings.default_n_predict)
        if stream and self.route.streams:
            self._pump = asyncio.ensure_future(self._stream(model))
            try:
                await self._pump
            except asyncio.CancelledError:
                if self._pump.cancelled():  # cancelled by on_connection_close
                    return
                raise
        else:
            await self._forward(model)

    # ------------------------------------------------------------------ non-streaming
    async def _forward(self, model: str) -> None:
        async def send(lease: Lease) -> UpstreamResponse:
            return await self.upstream.post(
                *lease.address, self.upstream_path, self._engine_body,
                {**lease.headers(), "Content-Type": "application/json"},
            )

        resp = await self.router.call(model, send, acquire=self._acquire)
        if resp.code >= 400:
            status, err = upstream_error(resp.code, resp.body)
            self.write_json(err, status)
            return
        if self.route.records_stats:
            self.router.stats.record(model, self.upstream_path, resp.body[-STATS_TAIL_BYTES:])
        self.set_status(resp.code)
        self.finish(Renamer(model)(resp.body))

    # ------------------------------------------------------------------ streaming
    async def _stream(self, model: str) -> None:
        try:
            await self.router.call(
                model, lambda lease: self._pump_one(lease, model),
                # Replayed only while nothing reached the client; after that a replay
                # would repeat tokens the client already has.
                replayable=lambda: not self._data_sent, acquire=self._acquire_with_pings,
            )
        except LemonadeError as exc:
            await self._fail(exc)
        except ClientGone:
            return

    async def _acquire(self, model: str) -> Lease:
        """A lease for this route: with one of the backend's slots, or none (tokenizing)."""
        return await self.router.acquire(model, slot=self.route.uses_slot)

    async def _acquire_with_pings(self, model: str) -> Lease:
        """Acquire a lease; if that takes long (cold load, a full model), commit SSE headers
        and ping, or tell the load's progress (``stream_loading_state``)."""
        task = asyncio.ensure_future(self._acquire(model))
        events = self._subscribe_to_load(model)
        try:
            if events is not None:
                return await self._acquire_telling_load(task, model, events)
            return await self._pinging(task)
        finally:
            if events is not None:
                self.router.events.unsubscribe(events)
            if not task.done():
                # We are leaving (client gone): give the lease back once the load finishes.
                task.add_done_callback(self._release_orphan)

    def _subscribe_to_load(self, model: str) -> asyncio.Queue[Event] | None:
        """The router's events while a cold load is told to a chat client, else None."""
        if self.route is not CHAT or not self.settings.get("lemonade_stream_loading_state"):
            return None
        live = self.router.get_live(model)
        if live is not None and live.stored_state is ModelState.READY:
            return None  # no load to wait for
        return self.router.events.subscribe()

    async def _acquire_telling_load(self, task: asyncio.Future[Lease], model: str,
                                    events: asyncio.Queue[Event]) -> Lease:
        """Wait for the lease, sending each event of the load as reasoning content.

        These chunks are not the answer: a replay after them is still allowed."""
        chunk_id = loading_state.new_id()

        async def tell(text: str | None) -> None:
            if text:
                await self._write(loading_state.chunk(model, text, chunk_id))

        await tell(loading_state.start_line(model))
        nxt: asyncio.Future[Event] = asyncio.ensure_future(events.get())
        try:
            while True:
                done, _ = await asyncio.wait({task, nxt}, timeout=self.ping_interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    await tell(loading_state.describe(nxt.result(), model))
                    nxt = asyncio.ensure_future(events.get())
                if task in done:
                    while not events.empty():  # what happened just before the lease
                        await tell(loading_state.describe(events.get_nowait(), model))
                    return task.result()
                if not done:
                    await self._ping()
        finally:
            nxt.cancel()

    def _release_orphan(self, task: asyncio.Task[Lease]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.router.release(task.result(), ok=True)

    async def _pump_one(self, lease: Lease, model: str) -> None:
        """Stream one backend answer to the client (the lease is the router's to release)."""
        resp = await self.upstream.stream(
            *lease.address, self.upstream_path, self._engine_body,
            # llama-server closes the connection after a stream although it advertises
            # keep-alive; saying so keeps that connection out of the pool.
            {**lease.headers(), "Content-Type": "application/json", "Connection": "close"},
        )
        try:
            await self._send_stream(resp, model)
        finally:
            await resp.aclose()

    async def _send_stream(self, resp: ChunkStream, model: str,
                           clean: Callable[[bytes], bytes] = lambda body: body) -> None:
        """Relay a streamed answer to the client, or its error answer in our shape (``clean``
        edits an error's body first). Local backends and remote replicas alike."""
        if resp.code >= 400:
            status, err = upstream_error(resp.code, clean(await resp.read()))
            if not self._headers_sent:
                self.write_json(err, status)
            else:
                await self._write(b"data: " + json.dumps(err).encode() + b"\n\n")
                self.finish()
            return
        first = await self._first_with_pings(resp)
        if first is not None:
            self._commit_headers()
            await self._relay(first, resp, model)
        self.finish()

    async def _first_with_pings(self, chunks: ChunkStream) -> bytes | None:
        """The first chunk, pinging while the backend is silent (prefill)."""
        nxt = asyncio.ensure_future(chunks.__anext__())
        try:
            return await self._pinging(nxt)
        except StopAsyncIteration:
            return None
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _pinging(self, task: asyncio.Future[T]) -> T:
        """``task``'s result, with a ``: ping`` comment after every ``ping_interval`` of
        waiting (the caller deals with a task it leaves unfinished)."""
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.ping_interval)
            if done:
                return task.result()
            await self._ping()

    async def _relay(self, first: bytes, chunks: ChunkStream, model: str) -> None:
        """Pass the events on as they complete, ``model`` renamed, everything that arrived in one
        write; the previous write must have gone out before the next one starts."""
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
                    self.write(rename(ready))
                    if flushed is not None:
                        await flushed
                    flushed = self.flush()
                    self._data_sent = True
                chunk = await chunks.next_chunk()
            if pending:
                self.write(pending)
                if flushed is not None:
                    await flushed
                flushed = self.flush()
            if flushed is not None:
                await flushed
        except StreamClosedError as exc:
            raise ClientGone() from exc
        if self.route.records_stats:
            self.router.stats.record(model, self.upstream_path, before_last + last + pending)

    def _commit_headers(self) -> None:
        if self._headers_sent:
            return
        self._headers_sent = True
        self.set_status(200)
        self.set_event_stream_headers()

    async def _write(self, data: bytes) -> None:
        self._commit_headers()
        try:
            self.write(data)
            await self.flush()
        except StreamClosedError as exc:
            raise ClientGone() from exc

    async def _ping(self) -> None:
        await self._write(b": ping\n\n")

    async def _fail(self, exc: LemonadeError) -> None:
        """Before the first byte: a normal error answer; after it: an SSE error event."""
        if not self._headers_sent:
            raise exc
        try:
            await self._write(b"data: " + json.dumps(exc.to_body()).encode() + b"\n\n")
            self.finish()
        except ClientGone:
            pass

    def finish(self, chunk: Any = None) -> Any:  # type: ignore[override]
        if self._headers_sent:
            return super().finish(chunk, set_content_type="text/event-stream")
        return super().finish(chunk)
