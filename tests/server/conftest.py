"""Fixtures for end-to-end tests of the extension inside a real Jupyter server (pytest-jupyter),
and one shared in-process app per module for the tests of request shapes (``shared_api``).

``jp_serverapp`` builds a real ``ServerApp`` (base_url ``/a%40b/``, so a missing prefix shows)
with ``lemonade_jupyter`` enabled and a private data dir. pytest-jupyter never runs the server's
``_post_start`` hook, so :func:`lemonade` starts the extension the way Jupyter does
(``extension_manager.start_extension``) and stops it on teardown, before the autouse
no-orphans check of ``tests/conftest.py`` looks for leftover backends.

pytest-jupyter runs ``async def`` tests itself on the server's loop: no asyncio marker is needed,
and a test must never block that loop (use ``AsyncOpenAI``/``httpx.AsyncClient``, not the sync
clients, against the fixture server).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from traitlets.config import Config

from lemonade_jupyter.server.app import LemonadeApp
from tests.helpers.envelope import assert_envelope
from tests.helpers.http import API, auth_headers
from tests.helpers.memory_app import MemoryApp

#: Fields of a health entry that move on their own.
VOLATILE = frozenset({"idle_s", "memory_bytes", "memory_freed_bytes", "device"})


@dataclass
class Answer:
    """One HTTP answer: status, headers and the body parsed as JSON (None if it is not JSON)."""

    code: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def error(self) -> dict[str, Any]:
        """The error object of an envelope; fails the test if the body is not one."""
        return assert_envelope(self)


class Api:
    """Small client over ``jp_fetch``: never raises on an HTTP error status."""

    def __init__(self, fetch: Callable[..., Awaitable[Any]]) -> None:
        self._fetch = fetch

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await self.request("GET", path, **kwargs)

    async def post(
        self, path: str, body: Any = None, *, raw: bytes | str | None = None, **kwargs: Any
    ) -> Answer:
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return await self.request("POST", path, body=data, **kwargs)

    async def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        kwargs.setdefault("request_timeout", 120)
        resp = await self._fetch(
            *path.split("/"), method=method, raise_error=False,
            allow_nonstandard_methods=True, **kwargs,
        )
        return Answer(resp.code, resp.headers, resp.body or b"")

    async def health(self) -> dict[str, Any]:
        answer = await self.get(f"{API}/health")
        assert answer.code == 200, answer.body
        return answer.json  # type: ignore[no-any-return]

    async def loaded(self) -> dict[str, dict[str, Any]]:
        """``all_models_loaded`` of ``/health`` by model name, without the fields that change
        by themselves (idle time, memory samples), so two snapshots compare equal when no
        request changed anything (last_use, pid, pin and state included)."""
        return {
            m["model_name"]: {k: v for k, v in m.items() if k not in VOLATILE}
            for m in (await self.health())["all_models_loaded"]
        }

    async def load(self, name: str, **body: Any) -> dict[str, Any]:
        answer = await self.post(f"{API}/load", {"model_name": name, **body})
        assert answer.code == 200, answer.body
        return answer.json  # type: ignore[no-any-return]

    async def pull(self, name: str, checkpoint: str, labels: list[str] | None = None) -> None:
        body: dict[str, Any] = {"model_name": name, "checkpoint": checkpoint, "recipe": "llamacpp"}
        if labels is not None:
            body["labels"] = labels
        answer = await self.post(f"{API}/pull", body)
        assert answer.code == 200, answer.body


@pytest.fixture
def lemonade_data_dir(tmp_path):
    path = tmp_path / "lemonade-data"
    path.mkdir()
    return path


@pytest.fixture
def lemonade_traits(request) -> dict[str, Any]:
    """Extra ``c.LemonadeApp`` settings: override the fixture in a module, or parametrize it
    ``indirect=True`` for one test."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def jp_server_config(lemonade_data_dir, lemonade_traits, llama_server_path):
    # jp_environ points HOME at a temporary dir, which hides the cached llama-server build:
    # name the binary found before that (session fixture) explicitly.
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"lemonade_jupyter": True},
                "reraise_server_extension_failures": True,
            },
            "LemonadeApp": {
                "data_dir": str(lemonade_data_dir),
                "sse_ping_interval_s": 0.05,
                "restore_on_start": False,
                "llama_server_path": llama_server_path,
                **lemonade_traits,
            },
        }
    )


@pytest.fixture
def lemonade(jp_serverapp, jp_asyncio_loop) -> LemonadeApp:
    """The started extension app; stopped (every backend with it) when the test ends."""
    app = jp_serverapp.extension_manager.extension_points["lemonade_jupyter"].app
    assert isinstance(app, LemonadeApp)
    jp_asyncio_loop.run_until_complete(
        jp_serverapp.extension_manager.start_extension("lemonade_jupyter")
    )
    yield app
    jp_asyncio_loop.run_until_complete(app.stop_extension())


@pytest.fixture
def api(lemonade, jp_fetch) -> Api:
    return Api(jp_fetch)


@pytest.fixture
def server_url(lemonade, jp_http_port, jp_base_url) -> str:
    """``http://127.0.0.1:PORT{base_url}`` of the fixture server (ends with a slash)."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"


@pytest.fixture
def token(jp_serverapp) -> str:
    return jp_serverapp.identity_provider.token  # type: ignore[no-any-return]


@pytest.fixture
def openai_client(jp_asyncio_loop) -> Iterator[Callable[[str, str], openai.AsyncOpenAI]]:
    """Makes ``AsyncOpenAI`` clients (``make(base_url, api_key)``), closed when the test ends.

    Async, because the sync client would block the loop a fixture server runs on; fixtures are
    sync (pytest-jupyter runs only async *tests*), so closing goes through the loop.
    """
    made: list[openai.AsyncOpenAI] = []

    def make(base_url: str, api_key: str) -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                       timeout=60))
        return made[-1]

    yield make
    for c in made:
        jp_asyncio_loop.run_until_complete(c.close())


@pytest.fixture
def client(api, server_url, token, openai_client) -> openai.AsyncOpenAI:
    """``AsyncOpenAI`` pointed at the extension (``api`` makes the fixture server listen)."""
    return openai_client(f"{server_url}{API}", token)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return where  # type: ignore[no-any-return]


# -- one app for a whole module of request-shape tests -------------------------------------------
class SyncApi:
    """What :class:`Api` offers, blocking, for the app of :func:`shared_app` (it runs on a
    thread of its own, so a blocking client never stalls the loop it talks to)."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, *, raw: bytes | str | None = None,
             **kwargs: Any) -> Answer:
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.request("POST", path, content=data, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        resp = self._client.request(method, path, **kwargs)
        return Answer(resp.status_code, resp.headers, resp.content)

    def health(self) -> dict[str, Any]:
        answer = self.get(f"{API}/health")
        assert answer.code == 200, answer.body
        return answer.json  # type: ignore[no-any-return]

    def loaded(self) -> dict[str, dict[str, Any]]:
        """As :meth:`Api.loaded`: the loaded models without the fields that move alone."""
        return {
            m["model_name"]: {k: v for k, v in m.items() if k not in VOLATILE}
            for m in self.health()["all_models_loaded"]
        }

    def load(self, name: str, **body: Any) -> dict[str, Any]:
        answer = self.post(f"{API}/load", {"model_name": name, **body})
        assert answer.code == 200, answer.body
        return answer.json  # type: ignore[no-any-return]

    def state(self) -> tuple[Any, ...]:
        """What a test may change: loaded models, settings, catalog, aliases."""
        return (self.loaded(), self.get("lemonade/internal/config").json,
                self.get(f"{API}/models").json, self.get(f"{API}/alias").json)


@dataclass
class SharedApp:
    """The module's app and the state each test starts from (:meth:`SyncApi.state`)."""

    app: MemoryApp
    clean: tuple[Any, ...]


def _client(app: MemoryApp) -> httpx.Client:
    return httpx.Client(base_url=app.url, headers=auth_headers(app.token),
                        timeout=httpx.Timeout(60.0, connect=10.0))


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedApp]:
    """ONE app for a module: the real router and handlers on in-memory backends, one slot per
    type (started in about 0.1 s; no process, no Jupyter server)."""
    with MemoryApp(tmp_path_factory.mktemp("shared-app"), max_loaded_models=1) as app:
        with _client(app) as c:
            clean = SyncApi(c).state()
        yield SharedApp(app, clean)


@pytest.fixture
def shared_api(shared_app: SharedApp) -> Iterator[SyncApi]:
    """A client of :func:`shared_app`; the app is put back as it was after each test (models
    unloaded, settings, user models and aliases restored), and a test that starts from
    anything else fails, so no test depends on another's leftovers."""
    with _client(shared_app.app) as c:
        api = SyncApi(c)
        assert api.state() == shared_app.clean, "the shared app was left changed by a test"
        yield api
        _restore(api, shared_app.clean)


def _restore(api: SyncApi, clean: tuple[Any, ...]) -> None:
    """Undo what a test changed on the shared app (see :meth:`SyncApi.state`)."""
    _, config, models, aliases = clean
    api.post(f"{API}/unload", {})
    now = api.get("lemonade/internal/config").json
    changed = {k: config[k] for k in config["settable_keys"] if now[k] != config[k]}
    if changed:
        assert api.post("lemonade/internal/set", changed).code == 200
    for alias in set(api.get(f"{API}/alias").json["aliases"]) - set(aliases["aliases"]):
        api.post(f"{API}/alias/remove", {"alias": alias})
    before = {m["id"] for m in models["data"]}
    for m in api.get(f"{API}/models").json["data"]:
        if m["id"] not in before:
            api.post(f"{API}/delete", {"model_name": m["id"]})
