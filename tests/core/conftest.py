"""Helpers for router integration tests: a router factory, event waits and a replaying client.

pytest-jupyter runs ``async def`` tests on its own loop but has no async fixtures, so a test
opens its router with ``async with make_router(...) as router:``; the router is always stopped
on the way out, even when the test fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lemonade_jupyter.core.catalog import Catalog
from lemonade_jupyter.core.events import Event
from lemonade_jupyter.core.router import Lease, Router
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import BackendTransportError
from tests.helpers.polling import wait_until

#: Generous: a real load takes ~0.4 s, but this machine is shared and has 2 cores.
DEADLINE_S = 30.0


def events(router: Router, kind: str | None = None, model: str | None = None) -> list[Event]:
    return [e for e in router.events.recent()
            if (kind is None or e.kind == kind) and (model is None or e.model == model)]


async def wait_event(router: Router, kind: str, model: str | None = None, *, count: int = 1,
                     timeout: float = DEADLINE_S) -> list[Event]:
    """Wait until at least ``count`` events of ``kind`` (for ``model``) were emitted."""
    return await wait_until(
        lambda: (found := events(router, kind, model)) and len(found) >= count and found,
        timeout, f"{count} {kind!r} event(s) for {model}",
    )


def ready_pid(router: Router, name: str) -> int | None:
    """The pid of ``name``'s backend when it is loaded and serving, else None."""
    m = router.get_live(name)
    if m is None or m.backend is None or m.state.value not in ("ready", "in_use"):
        return None
    return m.backend.pid


async def post(router: Router, lease: Lease, path: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> httpx.Response:
    return await router.http.post(
        f"{lease.url}{path}", json=body,
        headers=lease.headers() if headers is None else headers, timeout=60,
    )


async def chat(router: Router, name: str, prompt: str = "Say hi",
               path: str = "/v1/chat/completions") -> tuple[int, dict[str, Any]]:
    """One request through the router's replay-once call, as the proxy makes it.

    ``Router.call`` takes a lease (auto-loading the model) and, when the backend turns out to
    be dead in transport, reports it and replays once through a new lease. Returns the pid of
    the backend that answered and its JSON.
    """
    body: dict[str, Any] = {"max_tokens": 4, "temperature": 0}
    if path == "/v1/embeddings":
        body["input"] = prompt
    elif path == "/v1/completions":
        body["prompt"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": prompt}]

    async def send(lease: Lease) -> tuple[int, dict[str, Any]]:
        try:
            resp = await post(router, lease, path, body)
        except httpx.TransportError as exc:
            raise BackendTransportError(repr(exc)) from exc
        assert resp.status_code == 200, resp.text
        assert lease.backend.pid is not None
        return lease.backend.pid, resp.json()

    return await router.call(name, send)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def catalog(data_dir: Path, default_model_file: str) -> Catalog:
    """The built-in catalog plus user.m1..user.m4 (the default model under other names)."""
    cat = Catalog(data_dir)
    for i in range(1, 5):
        cat.add_user_model(f"user.m{i}", default_model_file)
    return cat


@pytest.fixture
def make_router(tmp_path: Path, data_dir: Path, llama_server_path: str):
    """``async with make_router(catalog, max_loaded_models=2, **settings) as router``."""

    @contextlib.asynccontextmanager
    async def factory(catalog: Catalog, *, server: str | None = None,
                      start: bool = True, **settings: Any) -> AsyncIterator[Router]:
        router = Router(
            catalog, RouterSettings(), llama_server_path=server or llama_server_path,
            data_dir=data_dir, log_dir=tmp_path / "logs",
        )
        # Fast failure handling for tests; callers override any of these.
        router.replace_settings(**{"stop_grace_s": 2.0, **settings})
        try:
            if start:
                await router.start()
            yield router
        finally:
            await router.stop()

    return factory
