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
``drop``         reads the whole request, then drops the connection without an answer
``huge``         an answer of :attr:`FakeUpstream.huge_bytes` (chunked, made as it is sent),
                 with the status :attr:`FakeUpstream.huge_status`
``drip``         an answer (or a stream) that sends a little every 0.2 s, for a minute
``redirect``     307 to :attr:`FakeUpstream.redirect_to` (default: the same origin's
                 ``/v1/moved/chat/completions``, which answers like ``ok``)

``POST /v1/embeddings`` and ``POST /v1/rerank`` answer in OpenAI's and lemonade's shapes, with
the ``model`` they were sent. Every request's path and ``Authorization`` header are recorded
in :attr:`FakeUpstream.seen`, its ``Cookie`` header in :attr:`FakeUpstream.cookies`. With
``set_cookie``, every answer sets a cookie (a login session, say). ``models`` replaces the
listed ids; ``list_bytes`` pads the list to about that size (sent as it is made).
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
                 slow_s: float = 5.0, host_name: str = "127.0.0.1",
                 models: tuple[str, ...] | list[str] = MODELS, list_bytes: int = 0,
                 set_cookie: str | None = None, huge_bytes: int = 0, huge_status: int = 200,
                 redirect_to: str = "/v1/moved/chat/completions") -> None:
        self.key = key
        self.tls = tls
        self.slow_s = slow_s
        self.host_name = host_name
        self.models = tuple(models)
        self.list_bytes = list_bytes
        self.set_cookie = set_cookie
        self.huge_bytes = huge_bytes
        self.huge_status = huge_status
        self.redirect_to = redirect_to
        self.seen: list[tuple[str, str | None]] = []
        self.cookies: list[str | None] = []
        #: Bytes of the ``huge`` answer written before the reader went away.
        self.huge_sent = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host_name}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/moved/chat/completions", self._moved)
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
        self.cookies.append(request.headers.get("Cookie"))
        return self.key is None or auth == f"Bearer {self.key}"

    def _headers(self) -> dict[str, str]:
        return {"Set-Cookie": f"{self.set_cookie}; Path=/"} if self.set_cookie else {}

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        listed = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
        if not self.list_bytes:
            return web.json_response(listed, headers=self._headers())
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"padding": "')
        block = b"x" * (1 << 20)
        for _ in range(self.list_bytes >> 20):
            await resp.write(block)
        await resp.write(b'", ' + json.dumps(listed).encode()[1:])
        await resp.write_eof()
        return resp

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
        if model == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if model == "huge":
            return await self._huge(request)
        if model == "drip":
            return await self._drip(request, bool(body.get("stream")))
        if model == "redirect":
            return web.Response(status=307, headers={"Location": self.redirect_to})
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
                         "message": {"role": "assistant", "content": "Hello"}}]},
            headers=self._headers())

    async def _moved(self, request: web.Request) -> web.Response:
        self._authorized(request)
        return web.json_response({
            "id": "x", "object": "chat.completion", "model": "moved",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Moved"}}]})

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=self.huge_status,
                                  headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        block = b" " * (1 << 20)
        try:
            while self.huge_sent < self.huge_bytes:
                await resp.write(block)
                self.huge_sent += len(block)
        except (ConnectionError, RuntimeError):  # the reader went away: stop making more
            return resp
        await resp.write_eof()
        return resp

    async def _drip(self, request: web.Request, stream: bool) -> web.StreamResponse:
        kind = "text/event-stream" if stream else "application/json"
        resp = web.StreamResponse(headers={"Content-Type": kind})
        await resp.prepare(request)
        try:
            for _ in range(300):
                await resp.write(_chunk("drip") if stream else b" ")
                await asyncio.sleep(0.2)
        except (ConnectionError, RuntimeError):
            pass
        return resp
