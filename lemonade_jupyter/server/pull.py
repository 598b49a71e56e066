"""``POST lemonade/api/v1/pull`` and ``…/pull/cancel``: models from local files or the hub.

A pull of a hub checkpoint (or of a curated model by name) starts or joins the download in
:mod:`..core.pulls`, which runs off the event loop. Without ``stream`` the answer comes when the
pull ends. With ``stream: true`` it is Server-Sent Events: ``progress`` events (bytes done and
total, per file and overall), then ``complete`` (the registered model) or ``error`` (the error
envelope plus its ``status``). A pull that fails before its first byte answers like a plain
request: an HTTP error status with the JSON envelope, as a stream would only hide the status.

A client that goes away does not stop the pull: it finishes and registers the model (a notebook
whose connection dropped keeps its download). ``…/pull/cancel`` stops it for everyone.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..core.catalog import ModelSpec, PullRequest
from ..core.hub import parse_checkpoint
from ..core.pulls import PullJob
from ..errors import InvalidRequestError, LemonadeError, ModelNotFoundError
from .base import LemonadeHandler
from .remote_hosts import own_server
from .remote_rest import pull_remote

#: Seconds of silence on a pull stream before a ``: ping`` comment.
PULL_KEEPALIVE_S = 5.0
PULL_KEYS = {"model_name", "checkpoint", "recipe", "labels", "mmproj", "stream"}

#: Pulls whose client left: kept referenced until they have registered their model.
_orphans: set[asyncio.Future[Any]] = set()


def pull_answer(request: PullRequest, spec: ModelSpec) -> dict[str, Any]:
    """The answer of a successful pull (also the data of the ``complete`` event)."""
    answer: dict[str, Any] = {"status": "success", **spec.to_json(), "type": spec.type}
    if request.ref is not None:
        answer.update(checkpoint=request.checkpoint, path=spec.checkpoint,
                      files=list(spec.files), size=spec.size())
        answer.pop("source", None)
    return answer


class PullHandler(LemonadeHandler):
    """``POST lemonade/api/v1/pull``: register a local GGUF, or download from the hub."""

    def initialize(self) -> None:
        self._streaming = False
        self._gone = False

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        remote = await pull_remote(self.router, body, own_server(self.settings))  # remote_rest
        if remote is not None:
            self.write_json(remote)
            return
        unknown = set(body) - PULL_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise InvalidRequestError(f"Unknown parameter '{key}'", param=key)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequestError("Parameter 'stream' must be a boolean", param="stream")
        catalog = self.router.catalog
        request = catalog.prepare_pull(body.get("model_name"), body.get("checkpoint"),
                                       body.get("recipe"), body.get("labels"),
                                       body.get("mmproj"))
        job = catalog.start_pull(request, self.router.events.emit)
        finish = asyncio.ensure_future(catalog.finish_pull(request, job))
        if not stream:
            self.write_json(pull_answer(request, await finish))
            return
        await self._stream(request, job, finish)

    async def _stream(self, request: PullRequest, job: PullJob | None,
                      finish: asyncio.Future[ModelSpec]) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        unsubscribe = job.subscribe(queue.put_nowait) if job is not None else (lambda: None)
        current = job.progress() if job is not None else None
        if current is not None:
            queue.put_nowait(current)
        try:
            while not finish.done() and not self._gone:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, finish}, timeout=PULL_KEEPALIVE_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self._send("progress", getter.result())
                else:
                    getter.cancel()
                    if not done:
                        await self._ping()
            while not queue.empty() and not self._gone:
                await self._send("progress", queue.get_nowait())
            if self._gone:
                _orphans.add(finish)
                finish.add_done_callback(_orphans.discard)
                finish.add_done_callback(_retrieve)
                return
            try:
                spec = finish.result()
            except Exception as exc:
                if not self._streaming:
                    raise  # nothing sent yet: a plain error answer with its status
                if not isinstance(exc, LemonadeError):
                    self.log.error("Pull failed", exc_info=exc)
                    exc = LemonadeError("Internal error in the lemonade router; see the "
                                        "Jupyter server log")
                await self._send("error", {**exc.to_body(), "status": exc.status_code})
            else:
                await self._send("complete", {**pull_answer(request, spec), "percent": 100.0})
            if not self._gone:
                self.finish()
        finally:
            unsubscribe()

    def _commit(self) -> None:
        if not self._streaming:
            self._streaming = True
            self.set_status(200)
            self.set_event_stream_headers()

    async def _write(self, data: bytes) -> None:
        self._commit()
        try:
            self.write(data)
            await self.flush()
        except StreamClosedError:
            self._gone = True

    async def _send(self, event: str, data: dict[str, Any]) -> None:
        await self._write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    async def _ping(self) -> None:
        await self._write(b": ping\n\n")

    def on_connection_close(self) -> None:
        self._gone = True

    def finish(self, chunk: Any = None) -> Any:  # type: ignore[override]
        if self._streaming:
            return super().finish(chunk, set_content_type="text/event-stream")
        return super().finish(chunk)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # an orphaned pull's failure was an event already


class PullCancelHandler(LemonadeHandler):
    """``POST lemonade/api/v1/pull/cancel``: stop the pulls of a model name or a checkpoint."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        unknown = set(body) - {"model_name", "model", "checkpoint"}
        if unknown:
            key = sorted(unknown)[0]
            raise InvalidRequestError(f"Unknown parameter '{key}'", param=key)
        name = body.get("model_name", body.get("model"))
        checkpoint = body.get("checkpoint")
        if name is None and checkpoint is None:
            raise InvalidRequestError(
                "Parameter 'model_name' or 'checkpoint' is required", param="model_name")
        if name is not None and (not isinstance(name, str) or not name or len(name) > 256):
            raise InvalidRequestError("Parameter 'model_name' must be a non-empty string",
                                      param="model_name")
        ref = parse_checkpoint(checkpoint) if checkpoint is not None else None
        if checkpoint is not None and ref is None:
            raise InvalidRequestError(
                "Parameter 'checkpoint' must be a hub checkpoint ORG/REPO:VARIANT or "
                "ORG/REPO/FILE.gguf", param="checkpoint")
        jobs = self.router.catalog.pulls.cancel(name=name, checkpoint=ref)
        if not jobs:
            raise ModelNotFoundError(f"No pull of '{name or checkpoint}' is in progress",
                                     param="model_name" if name is not None else "checkpoint")
        self.write_json({"status": "success", "cancelled": sorted(j.checkpoint for j in jobs)})
