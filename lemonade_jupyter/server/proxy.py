"""The OpenAI-compatible proxy: ``chat/completions``, ``completions`` and ``embeddings``.

Each request takes a lease on its model (auto-loading it, with the same 409 as ``/load`` when its
pool is all pinned), is forwarded over a keep-alive pool (``upstream.py``) with the backend's API key,
and holds the lease until the answer (or the whole stream) is done, so a busy model is never
evicted.

Streaming: chunks are written and flushed as they arrive (``await flush()`` is the
backpressure), never buffered; ``: ping`` comments keep the connection alive while a cold load or
a long prefill keeps it silent; a client that goes away cancels the pump, which closes the
backend request so llama-server stops generating.

Backend death: a non-streaming request is replayed once on a reloaded backend; a stream is
replayed only if no data reached the client yet, else it ends with an SSE error event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..core.router import Lease
from ..errors import InvalidRequestError, LemonadeError, UpstreamError, error_body
from .base import LemonadeHandler
from .openai_checks import check_request
from .upstream import UpstreamPool, UpstreamStream, UpstreamTransportError

#: Default seconds of silence before a ``: ping`` comment (c.LemonadeApp.sse_ping_interval_s).
DEFAULT_PING_INTERVAL_S = 2.0


class _ClientGone(Exception):
    """The HTTP client closed its connection; stop quietly."""


def _rewrite_model(payload: bytes, model: str) -> bytes:
    """Set ``"model"`` in a JSON object to the name the client asked for."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(data, dict) and "model" in data:
        data["model"] = model
        return json.dumps(data, separators=(",", ":")).encode()
    return payload


def _upstream_error(resp_status: int, payload: bytes) -> tuple[int, dict[str, Any]]:
    """Map a backend error answer to our envelope, keeping its status and message."""
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "backend error")
        err_type = str(err.get("type") or "server_error")
    else:
        message = payload.decode("utf-8", "replace")[:500] or f"backend answered {resp_status}"
        err_type = "invalid_request_error" if resp_status < 500 else "server_error"
    status = resp_status if 400 <= resp_status < 600 else 502
    return status, error_body(message, err_type, code="backend_error")


class OpenAIProxyHandler(LemonadeHandler):
    """Forwards one OpenAI-style POST to the model's backend."""

    upstream_path: str

    def initialize(self, upstream_path: str) -> None:
        self.upstream_path = upstream_path
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
        # Unknown model (404) or a body it cannot serve (400): refused before any auto-load.
        check_request(self.upstream_path, self.router.catalog.get(model), body)
        if stream and self.upstream_path != "/v1/embeddings":
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
        router = self.router
        for attempt in (1, 2):
            lease = await router.acquire(model)
            ok = False
            try:
                resp = await self.upstream.post(
                    *lease.address, self.upstream_path, self.request.body,
                    {**lease.headers(), "Content-Type": "application/json"},
                )
                ok = True
            except UpstreamTransportError as exc:
                await router.report_failure(lease)
                if attempt == 1:
                    continue
                raise UpstreamError(f"The backend of '{model}' failed: {exc!r}") from exc
            finally:
                router.release(lease, ok=ok)
            break
        if resp.code >= 400:
            status, err = _upstream_error(resp.code, resp.body)
            self.write_json(err, status)
            return
        self.set_status(resp.code)
        self.finish(_rewrite_model(resp.body, model))

    # ------------------------------------------------------------------ streaming
    async def _stream(self, model: str) -> None:
        try:
            for attempt in (1, 2):
                lease = await self._acquire_with_pings(model)
                try:
                    await self._pump_one(lease, model)
                    return
                except (UpstreamTransportError, UpstreamError) as exc:
                    await self.router.report_failure(lease)
                    if attempt == 1 and not self._data_sent:
                        continue
                    await self._fail(UpstreamError(
                        f"The backend of '{model}' failed during the stream: {exc!r}"
                    ))
                    return
        except LemonadeError as exc:
            await self._fail(exc)
        except _ClientGone:
            return

    async def _acquire_with_pings(self, model: str) -> Lease:
        """Acquire a lease; if that takes long (cold load), commit SSE headers and ping."""
        task = asyncio.ensure_future(self.router.acquire(model))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.ping_interval)
                if done:
                    return task.result()
                await self._ping()
        finally:
            if not task.done():
                # We are leaving (client gone): give the lease back once the load finishes.
                task.add_done_callback(self._release_orphan)

    def _release_orphan(self, task: asyncio.Task[Lease]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.router.release(task.result(), ok=True)

    async def _pump_one(self, lease: Lease, model: str) -> None:
        router = self.router
        ok = False
        try:
            resp = await self.upstream.stream(
                *lease.address, self.upstream_path, self.request.body,
                # llama-server closes the connection after a stream although it advertises
                # keep-alive; saying so keeps that connection out of the pool.
                {**lease.headers(), "Content-Type": "application/json", "Connection": "close"},
            )
            try:
                if resp.code >= 400:
                    payload = await resp.read()
                    status, err = _upstream_error(resp.code, payload)
                    ok = True
                    if not self._headers_sent:
                        self.write_json(err, status)
                    else:
                        await self._write(b"data: " + json.dumps(err).encode() + b"\n\n")
                        self.finish()
                    return
                first = await self._first_with_pings(resp)
                if first is None:
                    ok = True
                    self.finish()
                    return
                self._commit_headers()
                await self._relay(first, resp, model)
                ok = True
                self.finish()
            finally:
                await resp.aclose()
        finally:
            router.release(lease, ok=ok)

    async def _first_with_pings(self, chunks: UpstreamStream) -> bytes | None:
        """The first chunk, pinging while the backend is silent (prefill)."""
        nxt = asyncio.ensure_future(chunks.__anext__())
        try:
            while True:
                done, _ = await asyncio.wait({nxt}, timeout=self.ping_interval)
                if done:
                    try:
                        return nxt.result()
                    except StopAsyncIteration:
                        return None
                await self._ping()
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _relay(self, first: bytes, chunks: UpstreamStream, model: str) -> None:
        """Write SSE events as they complete, with ``model`` rewritten; flush each time."""
        pending = b""
        chunk: bytes | None = first
        while chunk is not None:
            pending += chunk
            cut = pending.rfind(b"\n\n")
            if cut >= 0:
                ready, pending = pending[: cut + 2], pending[cut + 2 :]
                await self._write(self._rewrite_events(ready, model))
                self._data_sent = True
            chunk = await anext(chunks, None)
        if pending:
            await self._write(pending)

    @staticmethod
    def _rewrite_events(block: bytes, model: str) -> bytes:
        out = []
        for event in block.split(b"\n\n"):
            if event.startswith(b"data: {"):
                event = b"data: " + _rewrite_model(event[6:], model)
            out.append(event)
        return b"\n\n".join(out)

    def _commit_headers(self) -> None:
        if self._headers_sent:
            return
        self._headers_sent = True
        self.set_status(200)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def _write(self, data: bytes) -> None:
        self._commit_headers()
        try:
            self.write(data)
            await self.flush()
        except StreamClosedError as exc:
            raise _ClientGone() from exc

    async def _ping(self) -> None:
        await self._write(b": ping\n\n")

    async def _fail(self, exc: LemonadeError) -> None:
        """Before the first byte: a normal error answer; after it: an SSE error event."""
        if not self._headers_sent:
            raise exc
        try:
            await self._write(b"data: " + json.dumps(exc.to_body()).encode() + b"\n\n")
            self.finish()
        except _ClientGone:
            pass

    def finish(self, chunk: Any = None) -> Any:  # type: ignore[override]
        if self._headers_sent:
            return super().finish(chunk, set_content_type="text/event-stream")
        return super().finish(chunk)
