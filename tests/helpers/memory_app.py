"""The real app on in-memory backends: the router, its rules and the HTTP handlers, no process.

:class:`MemoryApp` runs the same tornado application as a Jupyter server or the embedded
router (``server/compose.py`` builds it; ``server/embedded.py`` hosts it on a thread of its
own, with its own loop, behind a random token), with a
:class:`~tests.fakes.memory_launcher.MemoryLauncher` as what starts backends. Its backends
answer HTTP on loopback ports (:mod:`tests.fakes.memory_http`). So the notebook-side tests
(magics, widgets, the client) talk over real HTTP to the real rules (admission, slots, pins, the
409, settings checks, aliases, pulls, events) in milliseconds, and what they check is what
the product does, not what a stand-in was written to do. Spawning, signals, real tokens and
memory stay with the end-to-end tests on ``llama-server``.

The kernel's client is synchronous; the app runs on its own thread, so the client never blocks
the loop it talks to. A test reaches the app's loop through :meth:`MemoryApp.on_loop` (to gate
a load, or crash a backend).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from lemonade_jupyter.core.backend_logs import log_path
from lemonade_jupyter.core.router import Router
from lemonade_jupyter.core.settings import from_config, server_options_from_config
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.server.embedded import EmbeddedServer
from tests.fakes.memory_launcher import MemoryLauncher

T = TypeVar("T")

#: The prefix of every route (stripped from :attr:`MemoryApp.requests` paths).
PREFIX = "/lemonade/"


class RecordingTransport(httpx.BaseTransport):
    """An ``httpx`` transport that sends through a real one and notes each request."""

    def __init__(self, sink: list[tuple[str, str, Any]], sent: list[httpx.Request]) -> None:
        self._inner = httpx.HTTPTransport()
        self._sink = sink
        self._last = sent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self._sink.append((request.method, request.url.path.removeprefix(PREFIX), body))
        self._last.append(request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class MemoryApp:
    """The whole app on in-memory backends, on a thread; ``with MemoryApp(root) as app``.

    ``settings`` are rows of the settings table (``max_loaded_models=1``,
    ``sse_ping_interval_s=0.05`` …), router and server rows alike, as in ``c.LemonadeApp``.
    :attr:`requests` lists ``(method, path, JSON body)`` of what clients made by
    :meth:`client` sent, paths without ``/lemonade/``.
    """

    def __init__(self, root: Path, **settings: Any) -> None:
        self.launcher = MemoryLauncher(serve_http=True)
        self.requests: list[tuple[str, str, Any]] = []
        self._last: list[httpx.Request] = []
        self._clients: list[RouterClient] = []
        self.server = EmbeddedServer(
            data_dir=root / "data", settings=from_config(settings),
            options=server_options_from_config(settings), launcher=self.launcher)

    def __enter__(self) -> MemoryApp:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._clients:
            client.close()
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.server.token

    @property
    def router(self) -> Router:
        """The app's router: read it only through :meth:`on_loop` (its loop owns it)."""
        assert self.server.router is not None
        return self.server.router

    @property
    def last_request(self) -> httpx.Request:
        """The newest request a recording client sent."""
        return self._last[-1]

    @property
    def sent(self) -> list[httpx.Request]:
        """Every request the recording clients sent, as sent (headers included)."""
        return list(self._last)

    def calls(self, path: str) -> list[Any]:
        """The JSON bodies sent to ``path`` (``api/v1/load``), oldest first."""
        return [b for _, p, b in self.requests if p == path]

    def client(self, **kwargs: Any) -> RouterClient:
        """A notebook-side client for the app that records what it sends (closed at exit)."""
        kwargs.setdefault("source", "memory app")
        kwargs.setdefault("transport", RecordingTransport(self.requests, self._last))
        client = RouterClient(self.url, self.token, kind="explicit", **kwargs)
        self._clients.append(client)
        return client

    def on_loop(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the app's loop (where the router and launcher live); its result."""
        loop = self.server._loop
        assert loop is not None

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)

    def loaded(self) -> dict[str, dict[str, Any]]:
        """``all_models_loaded`` of ``/health`` by name, read without recording."""
        with httpx.Client(base_url=self.url, timeout=10,
                          headers={"Authorization": f"token {self.token}"}) as c:
            health = c.get(f"{PREFIX}api/v1/health").json()
        return {m["model_name"]: m for m in health["all_models_loaded"]}

    def write_log(self, model: str, lines: list[str]) -> None:
        """Give ``model``'s newest backend these log lines, where a real one writes its log
        (the logs route reads that folder)."""
        generation = self.on_loop(lambda: self.launcher.backend(model).generation)
        path = log_path(self.router.launcher.log_dir, model, generation)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Await ``coro`` on the app's loop (start a loopback upstream there, say)."""
        loop = self.server._loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
