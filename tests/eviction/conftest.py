"""Fixtures for the eviction-engine tests: an embedded server (the full HTTP API) and a client.

Every test talks HTTP to :class:`~lemonade_jupyter.server.embedded.EmbeddedServer`, which runs
the same tornado handlers and router as the Jupyter extension on a thread of its own, so a test
can block on plain ``httpx`` calls (and run several of them from threads) without starving the
server. Backends are real ``llama-server`` processes serving the default model; ``user.m1`` ..
``user.m3`` are the same GGUF registered again through ``/pull`` so there are several models.

The engine's background loop, memory sampler and watchdog are slowed to once an hour: every
evaluation in these tests is the synchronous ``/internal/simulate-vram-pressure`` (except the one
test that turns the loop back on to prove it runs by itself), so no decision happens behind a
test's back. ``eviction_grace_s`` is 0 unless a test sets it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.server.embedded import EmbeddedServer
from tests.helpers.http import api_client

#: A real load takes ~0.4 s on an idle machine, several seconds on this shared 2-core one.
DEADLINE_S = 60.0
USER_MODELS = ("user.m1", "user.m2", "user.m3")
SIMULATE = "internal/simulate-vram-pressure"


class Lemonade:
    """A small blocking client for one embedded server; never raises on an HTTP error."""

    def __init__(self, server: EmbeddedServer) -> None:
        self.server = server
        self.base = server.url + "lemonade/"
        self.http = api_client(self.base, server.token)

    @property
    def router(self) -> Any:
        return self.server.router

    def close(self) -> None:
        self.http.close()

    # -- raw calls ---------------------------------------------------------------------------
    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if "content" in kwargs:
            return self.http.post(path, **kwargs)
        return self.http.post(path, json=body if body is not None else {}, **kwargs)

    # -- checked calls -------------------------------------------------------------------------
    def ok(self, resp: httpx.Response) -> Any:
        assert resp.status_code == 200, f"{resp.request.url} -> {resp.status_code}: {resp.text}"
        return resp.json()

    def health(self) -> dict[str, Any]:
        return self.ok(self.get("api/v1/health"))  # type: ignore[no-any-return]

    def models(self) -> dict[str, dict[str, Any]]:
        """``all_models_loaded`` by name."""
        return {m["model_name"]: m for m in self.health()["all_models_loaded"]}

    def model(self, name: str) -> dict[str, Any] | None:
        return self.models().get(name)

    def load(self, name: str, **body: Any) -> dict[str, Any]:
        return self.ok(self.post("api/v1/load", {"model_name": name, **body}))  # type: ignore

    def unload(self, name: str | None = None) -> httpx.Response:
        return self.post("api/v1/unload", {"model_name": name} if name else {})

    def set(self, **settings: Any) -> dict[str, Any]:
        return self.ok(self.post("internal/set", settings))  # type: ignore[no-any-return]

    def pin(self, name: str, pinned: bool) -> dict[str, Any]:
        return self.ok(self.post("internal/pin", {"model_name": name, "pinned": pinned}))

    def simulate(self, pct: float) -> list[dict[str, Any]]:
        """One synchronous evaluation; the actions it committed."""
        return self.ok(self.post(SIMULATE, {"pct": pct}))["actions"]  # type: ignore

    def chat(self, name: str, prompt: str = "Say hi", max_tokens: int = 4) -> dict[str, Any]:
        return self.ok(self.post("api/v1/chat/completions", {  # type: ignore[no-any-return]
            "model": name, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0,
        }))

    def events(self, kind: str | None = None, model: str | None = None) -> list[Any]:
        """The router's event ring (read directly: the SSE route has tests of its own)."""
        return [e for e in list(self.router.events)
                if (kind is None or e.kind == kind) and (model is None or e.model == model)]

    def metrics(self) -> str:
        resp = self.get("metrics")
        assert resp.status_code == 200, resp.text
        return resp.text


#: Settings that keep every decision in the test's hands (see the module docstring).
TEST_SETTINGS = dict(
    max_loaded_models=4,
    memory_sample_interval_s=3600.0,
    eviction_interval_s=3600.0,
    watchdog_interval_s=3600.0,
    eviction_grace_s=0.0,
    stop_grace_s=2.0,
    restore_on_start=False,
)


@pytest.fixture
def make_lemonade(tmp_path: Path, llama_server_path: str, default_model_file: str):
    """``make_lemonade(**settings)`` starts an embedded server with user.m1..m3 registered."""
    started: list[tuple[EmbeddedServer, Lemonade]] = []

    def factory(**settings: Any) -> Lemonade:
        data_dir = tmp_path / f"data{len(started)}"
        server = EmbeddedServer(
            data_dir=data_dir,
            settings=RouterSettings(**{**TEST_SETTINGS, **settings}),
            llama_server_path=llama_server_path,
        )
        server.start()
        client = Lemonade(server)
        started.append((server, client))
        for name in USER_MODELS:
            client.ok(client.post("api/v1/pull", {
                "model_name": name, "checkpoint": default_model_file, "recipe": "llamacpp",
            }))
        return client

    yield factory
    for server, client in reversed(started):
        client.close()
        server.stop()


@pytest.fixture
def lemon(make_lemonade) -> Lemonade:
    """A started embedded server with the default settings of these tests."""
    return make_lemonade()


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``fn`` on a thread; the dict gets ``result`` or ``error`` when it ends."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # handed to the test, which re-raises it
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def join(thread: threading.Thread, out: dict[str, Any], timeout: float = DEADLINE_S) -> Any:
    thread.join(timeout)
    assert not thread.is_alive(), f"thread still running after {timeout} s"
    if "error" in out:
        raise out["error"]
    return out.get("result")
