"""A fake OpenAI-compatible upstream for the fault shapes of remote models (aiohttp, in-process).

It runs on the test's own event loop (``await FakeUpstream().start()``), plain HTTP, or HTTPS
with a given certificate. ``GET /v1/models`` lists :data:`MODELS` (a key is required when one
is set); ``POST /v1/chat/completions`` behaves by the ``model`` of the body, which is what the
router sent (the remote spec's ``upstream_model``):

``ok``           a normal answer (``"model": "ok"``), or an SSE stream of three events
``bad-request``  400 with an OpenAI error ``{"error": {"message", "type"}}``
``overloaded``   503 with a plain-text body
``slow``         sleeps :attr:`FakeUpstream.slow_s` before answering (a timeout)
``echo-key``     401 whose message repeats the ``Authorization`` header it got
``midstream``    a stream that sends one event, then drops the connection

``POST /v1/embeddings`` and ``POST /v1/rerank`` answer in OpenAI's and lemonade's shapes, with
the ``model`` they were sent. Every request's path and ``Authorization`` header are recorded
in :attr:`FakeUpstream.seen`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from aiohttp import web

MODELS = ("ok", "bad-request", "overloaded", "slow", "echo-key", "midstream")


def _chunk(text: str) -> bytes:
    event = {"object": "chat.completion.chunk", "model": "ok",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class FakeUpstream:
    """The fake's state: its port, the key it wants, and what it saw."""

    def __init__(self, *, key: str | None = None, tls: ssl.SSLContext | None = None,
                 slow_s: float = 5.0) -> None:
        self.key = key
        self.tls = tls
        self.slow_s = slow_s
        self.seen: list[tuple[str, str | None]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/rerank", self._rerank)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization")
        self.seen.append((request.path, auth))
        return self.key is None or auth == f"Bearer {self.key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        return web.json_response({"object": "list",
                                  "data": [{"id": m, "object": "model"} for m in MODELS]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        return web.json_response({"object": "list", "model": body.get("model"), "data": [
            {"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}]})

    async def _rerank(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        return web.json_response({"model": body.get("model"), "results": [
            {"index": i, "relevance_score": float(-i)} for i in range(len(body["documents"]))]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        authorized = self._authorized(request)
        body: dict[str, Any] = await request.json()
        model = body.get("model")
        if model == "echo-key":
            auth = request.headers.get("Authorization", "")
            return web.json_response(
                {"error": {"message": f"Incorrect API key provided: {auth}",
                           "type": "authentication_error"}}, status=401)
        if not authorized:
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        if model == "bad-request":
            return web.json_response(
                {"error": {"message": "max_tokens is too large: 99999999",
                           "type": "BadRequestError"}}, status=400)
        if model == "overloaded":
            return web.Response(status=503, text="upstream overloaded, try later")
        if model == "slow":
            await asyncio.sleep(self.slow_s)
        if model == "midstream":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(_chunk("partial"))
            await asyncio.sleep(0.2)
            assert request.transport is not None
            request.transport.close()
            return resp
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for word in ("Hello", " from", " upstream"):
                await resp.write(_chunk(word))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({
            "id": "x", "object": "chat.completion", "model": str(model),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Hello"}}]})
