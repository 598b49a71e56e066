"""The HTTP a memory backend answers: a loopback server in the test's own process.

A :class:`~tests.fakes.memory_launcher.MemoryBackend` started with ``serve_http`` listens on a
free 127.0.0.1 port of its own (aiohttp, on the router's loop), so the real proxy, the real
handlers and the kernel client see a backend that answers like ``llama-server``: ``/health``,
``/v1/models``, chat and text completions (plain JSON, or SSE ending with ``[DONE]``) and
embeddings. No process is started: a test that needs the engine's own answers (tokens,
timings, signals) uses the real engine.

The reply is :attr:`Replies.pieces`, joined for a plain answer and one SSE event per piece for
a stream; a test sets them to check what the notebook side does with them. Every request body
is recorded in :attr:`Replies.bodies`, as the backend received it (after the router's rewrites).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: What every memory backend answers unless a test says otherwise.
DEFAULT_PIECES = ("Hel", "lo", " there")


@dataclass
class Replies:
    """What memory backends answer, and what they were sent (shared by one launcher's)."""

    pieces: list[str] = field(default_factory=lambda: list(DEFAULT_PIECES))
    #: ``(path, body)`` of every completion or embedding request, in arrival order.
    bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class BackendHTTP:
    """One backend's loopback server; :meth:`close` stops listening (idempotent)."""

    def __init__(self, model: str, replies: Replies) -> None:
        self.model = model
        self.replies = replies
        self.port = 0
        #: What requests must carry (``Authorization: Bearer KEY``), as the real engine's.
        self.api_key = secrets.token_hex(8)
        self._runner: web.AppRunner | None = None

    async def open(self) -> int:
        """Listen on a free loopback port and return it."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _props(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": self.model, "is_sleeping": False})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list",
                                  "data": [{"id": self.model, "object": "model"}]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"code": 401, "message": "Invalid API Key",
                                                "type": "authentication_error"}}, status=401)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"code": 400, "message": "bad json"}}, status=400)
        path = request.path
        self.replies.bodies.append((path, body))
        if path == "/v1/embeddings":
            return web.json_response({"object": "list", "model": self.model, "data": [
                {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}]})
        chat = path == "/v1/chat/completions"
        pieces = list(self.replies.pieces)
        if not body.get("stream"):
            text = "".join(pieces)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "stop"} if chat else
                      {"index": 0, "text": text, "finish_reason": "stop"})
            return web.json_response({"object": "chat.completion" if chat else "text_completion",
                                      "model": self.model, "choices": [choice]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in pieces:
            delta = {"delta": {"content": piece}} if chat else {"text": piece}
            chunk = {"object": "chat.completion.chunk" if chat else "text_completion",
                     "model": self.model,
                     "choices": [{"index": 0, **delta, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
