"""The inference proxy: every route of the engine that serves a model (``engine_routes.py``).

OpenAI's chat, completions, embeddings and Responses API, Anthropic's messages, reranking,
infill, tokenizing and the chat template all go through here. Each request takes a lease on
its model (auto-loading it, with the same 409 as ``/load`` when its
pool is all pinned), is forwarded with the backend's API key (``upstream.py``: aiohttp, keep-alive
connections for plain requests), and holds the lease until the answer (or the whole stream) is
done, so a busy model is never evicted.

Local or remote is decided once (``Router.target``): a remote model's request goes to its
replicas instead (``remote_proxy.py``, failover by ``RemoteRegistry.call``), with no lease.
Either way the answer reaches the client through one relay (``relay.py``): written and flushed
as it arrives, with backpressure; the events pass through as bytes, only the ``"model"`` field
rewritten to the name the client asked for (llama-server names its GGUF path). ``: ping``
comments keep the connection alive while a cold load or a long prefill keeps it silent; a
client that goes away cancels the pump, which closes the backend request so llama-server stops
generating.

Load options in the body (``ctx_size``, ``llamacpp_args``) are taken out before it goes to the
engine and apply only when the request auto-loads its model (``request_load_options.py``).

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
from collections.abc import Awaitable
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..core.engine_flags import args_policy
from ..core.events import Event
from ..core.lifecycle import ModelState
from ..core.remote import RemoteModel
from ..core.remote_hops import HOP_HEADER
from ..core.router import Lease
from ..errors import InvalidRequestError, LemonadeError
from . import loading_state
from .answers import ClientGone
from .base import LemonadeHandler
from .engine_routes import CHAT, EngineRoute, body_for_engine
from .openai_checks import check_request
from .relay import AnswerRelay
from .remote_proxy import RemoteForwarder, check_remote_request
from .remote_upstream import RemoteUpstream
from .request_load_options import HEADER as LOAD_OPTIONS_HEADER
from .request_load_options import RequestLoadOptions, take_load_options
from .upstream import UpstreamPool, UpstreamResponse

#: Default seconds of silence before a ``: ping`` comment (c.LemonadeApp.sse_ping_interval_s).
DEFAULT_PING_INTERVAL_S = 2.0


class OpenAIProxyHandler(LemonadeHandler):
    """Forwards one POST to an engine route of the model's backend (or a remote model's
    replica)."""

    route: EngineRoute

    def initialize(self, route: EngineRoute) -> None:
        self.route = route
        self.upstream_path = route.path
        #: What goes to the engine: the client's body, or it with the default length.
        self._engine_body = b""
        #: Load options the body carried, for a load this request causes.
        self._load = RequestLoadOptions()
        #: The task relaying a stream (this request's own), cancelled if the client leaves.
        self._pump: asyncio.Task[Any] | None = None
        self._client_left = False
        self.relay = AnswerRelay(
            self, float(self.settings.get("lemonade_ping_interval_s", DEFAULT_PING_INTERVAL_S)),
            self._record_stats if route.records_stats else None)

    @property
    def upstream(self) -> UpstreamPool:
        return self.settings["lemonade_upstream"]  # type: ignore[no-any-return]

    @property
    def remote_upstream(self) -> RemoteUpstream:
        return self.settings["lemonade_remote_upstream"]  # type: ignore[no-any-return]

    def _record_stats(self, model: str, tail: bytes) -> None:
        self.router.stats.record(model, self.upstream_path, tail)

    def on_connection_close(self) -> None:
        """The client went away: stop pumping, which closes the backend request."""
        if self._pump is not None and not self._pump.done():
            self._client_left = True
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
        streams = stream and self.route.streams
        target = self.router.target(model)
        if isinstance(target, RemoteModel):  # no lease: its replicas (remote_proxy)
            check_remote_request(self.upstream_path, target, body)
            remote = RemoteForwarder(
                registry=self.router.remote, upstream=self.remote_upstream,
                settings=self.router.settings, relay=self.relay, path=self.upstream_path,
                incoming_hops=self.request.headers.get(HOP_HEADER),
                method=self.request.method or "POST")
            if streams:
                await self._pumped(remote.stream(target, body))
            else:
                await remote.plain(target, body)
            return
        # Load options (400 if bad) leave the body: the engine never sees them.
        self._load, body = take_load_options(body, args_policy(self.router.settings))
        raw = json.dumps(body).encode() if self._load.given else self.request.body
        # Unknown model (404) or a body it cannot serve (400): refused before any auto-load.
        check_request(self.upstream_path, self.router.catalog.get(target.name), body)
        self._engine_body = body_for_engine(self.route, body, raw,
                                            self.router.settings.default_n_predict)
        if streams:
            await self._pumped(self._stream(model))
        else:
            await self._forward(model)

    async def _pumped(self, work: Awaitable[None]) -> None:
        """Run a streamed answer in this request's task, which a client that goes away
        cancels; an error after the first byte becomes an SSE error event.

        The request's own task, not one of its own: a task more is a turn of the event loop
        before the backend is even asked, on every stream."""
        self._pump = asyncio.current_task()
        try:
            await self._stream_errors(work)
        except asyncio.CancelledError:
            if not self._client_left:  # the server is stopping: not ours to swallow
                raise
            uncancel = getattr(self._pump, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
        finally:
            self._pump = None

    async def _stream_errors(self, work: Awaitable[None]) -> None:
        try:
            await work
        except ClientGone:
            return
        except LemonadeError as exc:
            await self.relay.fail(exc)

    # ------------------------------------------------------------------ local: non-streaming
    async def _forward(self, model: str) -> None:
        async def send(lease: Lease) -> UpstreamResponse:
            return await self.upstream.post(
                *lease.address, self.upstream_path, self._engine_body,
                {**lease.headers(), "Content-Type": "application/json"},
            )

        resp = await self.router.call(model, send, acquire=self._acquire)
        self.relay.plain(resp, model)

    # ------------------------------------------------------------------ local: streaming
    async def _stream(self, model: str) -> None:
        await self.router.call(
            model, lambda lease: self._pump_one(lease, model),
            # Replayed only while nothing reached the client; after that a replay
            # would repeat tokens the client already has.
            replayable=lambda: not self.relay.data_sent, acquire=self._acquire_with_pings,
        )

    async def _acquire(self, model: str) -> Lease:
        """A lease for this route: with one of the backend's slots, or none (tokenizing).

        The request's load options apply if it auto-loads the model; the answer says what
        the model runs with, unless a stream's headers already went out (while it waited
        for that very load, which then ran with them)."""
        lease = await self.router.acquire(model, slot=self.route.uses_slot,
                                          options=self._load.options, given=self._load.given)
        if self._load.given and not self.relay.headers_sent:
            self.set_header(LOAD_OPTIONS_HEADER, self._load.running(lease.backend.options))
        return lease

    async def _acquire_with_pings(self, model: str) -> Lease:
        """Acquire a lease; if that takes long (cold load, a full model), commit SSE headers
        and ping, or tell the load's progress (``stream_loading_state``).

        A model that serves now with a slot free is leased at once, in this task: the pings'
        task, wait and timer would only cost the first token turns of the event loop."""
        if self.router.serves_now(model, slot=self.route.uses_slot):
            return await self._acquire(model)
        task = asyncio.ensure_future(self._acquire(model))
        events = self._subscribe_to_load(model)
        try:
            if events is not None:
                return await self._acquire_telling_load(task, model, events)
            return await self.relay.pinging(task)
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
                await self.relay.write(loading_state.chunk(model, text, chunk_id))

        await tell(loading_state.start_line(model))
        nxt: asyncio.Future[Event] = asyncio.ensure_future(events.get())
        try:
            while True:
                done, _ = await asyncio.wait({task, nxt}, timeout=self.relay.ping_interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    await tell(loading_state.describe(nxt.result(), model))
                    nxt = asyncio.ensure_future(events.get())
                if task in done:
                    while not events.empty():  # what happened just before the lease
                        await tell(loading_state.describe(events.get_nowait(), model))
                    return task.result()
                if not done:
                    await self.relay.ping()
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
            await self.relay.stream(resp, model)
        finally:
            await resp.aclose()

    def finish(self, chunk: Any = None) -> Any:  # type: ignore[override]
        if self.relay.headers_sent:
            return super().finish(chunk, set_content_type="text/event-stream")
        return super().finish(chunk)
