"""Every route of ``lemonade_jupyter.server.routes.ROUTES`` is behind Jupyter's auth: without
credentials (or with a wrong token) GET and POST are refused with a 403 JSON envelope; the
server token works as ``Authorization: token T`` and as ``Authorization: Bearer T`` (which is
what the official ``openai`` client sends)."""

from __future__ import annotations

import re

import httpx
import pytest
from tornado import web

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.server.routes import ROUTES

from tests.helpers.envelope import OLLAMA_PREFIX, assert_error_answer, assert_ollama_error

from .conftest import Answer

PATHS = [path for path, _cls, _kw in ROUTES]


@pytest.fixture
def http(jp_asyncio_loop):
    """One client for the many requests of a test (fixtures are sync; close on the loop)."""
    client = httpx.AsyncClient(timeout=30)
    yield client
    jp_asyncio_loop.run_until_complete(client.aclose())


def _supports(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(web.RequestHandler, method)


async def _call(
    http: httpx.AsyncClient, base: str, method: str, path: str, headers: dict[str, str]
) -> Answer:
    """One request; for a stream (the event route) only the status and headers are read."""
    # A route with a path parameter (``(?P<model>...)``) is called for the default model.
    path = re.sub(r"\(\?P<\w+>[^)]*\)", DEFAULT_MODEL, path)
    async with http.stream(method, f"{base}lemonade/{path}", headers=headers,
                           content=b"{}" if method == "POST" else None) as resp:
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            return Answer(resp.status_code, resp.headers, b"")
        return Answer(resp.status_code, resp.headers, await resp.aread())


def test_the_route_table_is_complete():
    """A route added to the app but not to ROUTES would escape these tests."""
    assert len(PATHS) == len(set(PATHS)) >= 12
    for path, cls, _kw in ROUTES:
        assert any(_supports(cls, m) for m in ("get", "post", "delete")), path


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "token wrong"}, {"Authorization": "Bearer wrong"},
     {"Authorization": "Basic d3Jvbmc6d3Jvbmc="}],
    ids=["none", "wrong-token", "wrong-bearer", "basic"],
)
async def test_every_route_refuses_requests_without_credentials(api, http, server_url, headers):
    for path in PATHS:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
            answer = await _call(http, server_url, method, path, headers)
            assert answer.code == 403, (method, path, answer.code, answer.body[:200])
            if method != "HEAD" and path.startswith(OLLAMA_PREFIX):  # Ollama's error shape
                assert_ollama_error(answer)
            elif method != "HEAD":  # a HEAD answer has no body
                assert answer.error["type"] == "permission_error"
    # Nothing behind the refused requests ran: no model was loaded, no process spawned.
    assert (await api.health())["all_models_loaded"] == []


@pytest.mark.parametrize("scheme", ["token", "Bearer", "bearer"])
async def test_every_route_accepts_the_server_token(api, http, server_url, token, scheme):
    headers = {"Authorization": f"{scheme} {token}"}
    for path, cls, _kw in ROUTES:
        for method in ("GET", "POST"):
            answer = await _call(http, server_url, method, path, headers)
            if _supports(cls, method.lower()):
                # Accepted: 200, or a 4xx about the (empty) body, never an auth refusal.
                assert answer.code not in (401, 403), (method, path, answer.body[:200])
                if method == "GET":
                    assert answer.code == 200, (method, path, answer.body[:200])
            else:
                assert answer.code == 405, (method, path, answer.code)
            if answer.code >= 400:
                assert_error_answer(path, answer)


async def test_cors_preflight_is_not_refused(api, http, server_url):
    """Browsers send the ``OPTIONS`` preflight without credentials; Jupyter answers it on
    every API route, and so must ours (the real request is still checked)."""
    headers = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    for path in PATHS:
        answer = await _call(http, server_url, "OPTIONS", path, headers)
        assert answer.code in (200, 204), (path, answer.code, answer.body[:200])
        assert "authorization" in answer.headers["access-control-allow-headers"]
