"""The base of the Ollama API's handlers: Ollama's error shape, model names, the call path.

Ollama's clients expect ``{"error": "message"}`` with an HTTP status, on every refusal (auth
included), and, once a stream has started, an ``{"error": ...}`` line. The router's own errors
keep their status; only the body changes shape.

Requests reach the model through the router exactly as the OpenAI proxy's do
(``router.call``: auto-load, pins, slots, leases, eviction, replay after a backend died once,
request statistics): only the body is translated before and the answer after.

Names: Ollama's clients add ``:latest`` to a bare name and name hub models
``hf.co/ORG/REPO:VARIANT``. Both are resolved here to the catalog's name (a model pulled from
that checkpoint), so a name the client pulled works in its next chat.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.iostream import StreamClosedError

from ..core.hub import parse_checkpoint
from ..core.router import Lease
from ..errors import InvalidRequestError, LemonadeError, ModelNotFoundError
from .answers import ClientGone, upstream_error
from .base import LemonadeHandler
from .ollama_options import OllamaOptions
from .openai_checks import check_request
from .upstream import UpstreamPool

#: Bytes at the end of an answer where the engine's ``timings`` are (request statistics).
STATS_TAIL_BYTES = 4096
HF_PREFIX = "hf.co/"


class UpstreamAnswerError(LemonadeError):
    """The engine refused a request: its status and message, passed on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status


def hub_checkpoint(name: str) -> str | None:
    """``ORG/REPO:VARIANT`` of an Ollama hub name (``hf.co/`` optional), else None."""
    bare = name[len(HF_PREFIX):] if name.lower().startswith(HF_PREFIX) else name
    return bare if "/" in bare and parse_checkpoint(bare) is not None else None


class OllamaHandler(LemonadeHandler):
    """Jupyter auth like every route; errors rendered as Ollama's ``{"error": ...}``."""

    def initialize(self) -> None:
        self._streaming = False
        self._task: asyncio.Future[Any] | None = None

    @property
    def upstream(self) -> UpstreamPool:
        return self.settings["lemonade_upstream"]  # type: ignore[no-any-return]

    def finish_error(self, body: dict[str, Any]) -> None:
        """Ollama's error shape: ``{"error": "<message>"}``, from the router's envelope."""
        self.clear_header("Content-Type")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": body["error"]["message"]}))

    # ------------------------------------------------------------------ names
    def model_param(self, body: dict[str, Any]) -> str:
        """``model`` (or the older ``name``) as the catalog names it."""
        raw = body.get("model", body.get("name"))
        if not isinstance(raw, str) or not raw or len(raw) > 512:
            raise InvalidRequestError("Parameter 'model' is required", param="model")
        return self.resolve_name(raw)

    def resolve_name(self, raw: str) -> str:
        name = raw[:-len(":latest")] if raw.endswith(":latest") else raw
        router = self.router
        if name in router.catalog or name in router.remote or router.resolve(name) != name:
            return name
        checkpoint = hub_checkpoint(raw)
        if checkpoint is not None:
            for spec in router.catalog.all(include_not_downloaded=True):
                if spec.source and spec.source.lower() == checkpoint.lower():
                    return spec.name
        return name

    def local_model(self, name: str) -> str:
        """``name`` resolved, when it is a catalog model (remote models are refused)."""
        if name in self.router.remote:
            raise InvalidRequestError(
                f"'{name}' is a remote model: use it through the OpenAI API "
                "(lemonade/api/v1)", param="model")
        resolved = self.router.resolve(name)
        if resolved not in self.router.catalog:
            raise ModelNotFoundError(f"model '{name}' not found", param="model")
        return resolved

    # ------------------------------------------------------------------ the call path
    async def prepare_model(self, name: str, opts: OllamaOptions) -> float:
        """Apply the request's load options and ``keep_alive`` (a load, only when it gives
        some); return the seconds it took."""
        if not opts.given:
            return 0.0
        started = time.monotonic()
        await self.router.load(name, options=opts.load, given=opts.given)
        return time.monotonic() - started

    async def after_answer(self, name: str, opts: OllamaOptions) -> None:
        """``keep_alive: 0``: unload once answered, unless the model is pinned."""
        live = self.router.get_live(name)
        if opts.unload_after and live is not None and not live.pinned:
            try:
                await self.router.unload(name)
            except ModelNotFoundError:
                pass  # gone meanwhile

    def check(self, name: str, path: str, body: dict[str, Any]) -> None:
        check_request(path, self.router.catalog.get(name), body)

    async def post_engine(self, name: str, path: str, body: dict[str, Any], *,
                          stats: bool = False) -> dict[str, Any]:
        """Send ``body`` to the model's engine route, whole; return its JSON answer."""
        data = json.dumps(body).encode()

        async def send(lease: Lease) -> Any:
            return await self.upstream.post(*lease.address, path, data,
                                            {**lease.headers(), "Content-Type": "application/json"})

        resp = await self.router.call(name, send)
        if resp.code >= 400:
            status, err = upstream_error(resp.code, resp.body)
            raise UpstreamAnswerError(status, err["error"]["message"])
        if stats:
            self.router.stats.record(name, path, resp.body[-STATS_TAIL_BYTES:])
        return json.loads(resp.body)  # type: ignore[no-any-return]

    async def stream_engine(self, name: str, path: str, body: dict[str, Any],
                            on_event: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Send ``body`` with ``stream: true``; call ``on_event`` with each SSE event's JSON.

        Replayed on a new backend once if the old one died before anything was written."""
        data = json.dumps(body).encode()

        async def pump(lease: Lease) -> None:
            resp = await self.upstream.stream(
                *lease.address, path, data,
                {**lease.headers(), "Content-Type": "application/json", "Connection": "close"})
            try:
                if resp.code >= 400:
                    status, err = upstream_error(resp.code, await resp.read())
                    raise UpstreamAnswerError(status, err["error"]["message"])
                pending, tail = b"", b""
                async for chunk in resp:
                    pending += chunk
                    tail = (tail + chunk)[-2 * STATS_TAIL_BYTES:]
                    while b"\n\n" in pending:
                        event, pending = pending.split(b"\n\n", 1)
                        for line in event.split(b"\n"):
                            if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                                await on_event(json.loads(line[6:]))
                self.router.stats.record(name, path, tail)
            finally:
                await resp.aclose()

        await self.router.call(name, pump, replayable=lambda: not self._streaming)

    # ------------------------------------------------------------------ NDJSON out
    async def write_line(self, data: dict[str, Any]) -> None:
        """One line of an NDJSON answer, flushed (the headers go with the first)."""
        if not self._streaming:
            self._streaming = True
            self.set_status(200)
            self.set_header("Content-Type", "application/x-ndjson")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
        try:
            self.write(json.dumps(data).encode() + b"\n")
            await self.flush()
        except StreamClosedError as exc:
            raise ClientGone() from exc

    async def run_stream(self, work: Awaitable[None]) -> None:
        """Run a streamed answer: before the first line an error is a plain answer, after it
        an ``{"error": ...}`` line; a client that goes away cancels the work."""
        self._task = asyncio.ensure_future(work)
        try:
            await self._task
        except asyncio.CancelledError:
            if self._task.cancelled():
                return
            raise
        except ClientGone:
            return
        except LemonadeError as exc:
            if not self._streaming:
                raise
            try:
                await self.write_line({"error": exc.message})
            except ClientGone:
                return
        if not self._finished:
            self.finish()

    def on_connection_close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def finish(self, chunk: Any = None) -> Any:  # type: ignore[override]
        if self._streaming:
            return super().finish(chunk, set_content_type="application/x-ndjson")
        return super().finish(chunk)
