"""Discovery order: env, config trait, the parent server, any server with lemonade, embedded."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from lemonade_jupyter.errors import ClientError
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.discovery import discover

EMBEDDED = RouterClient("http://embedded.test/", kind="embedded", source="embedded router")


def _transport(seen: list[tuple[str, str]], with_extension: set[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("Authorization", "")))
        if request.url.host in with_extension:
            return httpx.Response(200, json={"status": "ok", "all_models_loaded": []})
        return httpx.Response(404, text="not found")

    return httpx.MockTransport(handle)


SERVERS = [
    {"pid": 111, "url": "http://other.test:8888/", "token": "t-other"},
    {"pid": 222, "url": "http://parent.test:8889/base/", "token": "t-parent"},
]


def _discover(
    env: dict[str, str], with_extension: set[str], seen: list[Any] | None = None, **kwargs: Any
) -> RouterClient:
    return discover(
        environ=env,
        list_servers=lambda: SERVERS,
        start_embedded=lambda: EMBEDDED,
        transport=_transport(seen if seen is not None else [], with_extension),
        **kwargs,
    )


def test_discover_env_wins_without_probing() -> None:
    seen: list[Any] = []
    client = _discover(
        {
            "LEMONADE_JUPYTER_URL": "http://env.test:1",
            "LEMONADE_JUPYTER_TOKEN": "T",
            "JPY_PARENT_PID": "222",
        },
        {"parent.test"},
        seen,
        server_url="http://cfg.test/",
    )
    assert client.kind == "env" and client.base_url == "http://env.test:1/"
    assert client.token == "T" and "LEMONADE_JUPYTER_URL" in client.source
    assert seen == []


def test_discover_config_trait_next() -> None:
    client = _discover(
        {"JPY_PARENT_PID": "222"}, {"parent.test"}, server_url="http://cfg.test/", token="ct"
    )
    assert client.kind == "config" and client.token == "ct"
    assert "c.LemonadeMagics.server_url" in client.source


def test_discover_parent_server_by_pid_first() -> None:
    seen: list[Any] = []
    client = _discover({"JPY_PARENT_PID": "222"}, {"parent.test", "other.test"}, seen)
    assert client.kind == "parent"
    assert client.base_url == "http://parent.test:8889/base/"
    assert client.api_url == "http://parent.test:8889/base/lemonade/"
    assert "JPY_PARENT_PID" in client.source
    assert seen == [("parent.test", "token t-parent")]


def test_discover_parent_without_extension_falls_to_running_server() -> None:
    client = _discover({"JPY_PARENT_PID": "222"}, {"other.test"})
    assert client.kind == "running" and client.base_url == "http://other.test:8888/"
    assert "answers health" in client.source


def test_discover_embedded_when_no_server_answers() -> None:
    assert _discover({"JPY_PARENT_PID": "999"}, set()) is EMBEDDED
    assert (
        discover(environ={}, list_servers=lambda: [], start_embedded=lambda: EMBEDDED) is EMBEDDED
    )


def test_discover_mode_embedded_and_server() -> None:
    assert _discover({"JPY_PARENT_PID": "222"}, {"parent.test"}, mode="embedded") is EMBEDDED
    with pytest.raises(ClientError, match="No Jupyter server with the lemonade extension"):
        _discover({"JPY_PARENT_PID": "222"}, set(), mode="server")
    with pytest.raises(ValueError):
        _discover({}, set(), mode="bogus")


# -- JupyterHub and unix sockets ------------------------------------------------------------------
def test_discover_hub_service_url_with_the_hub_token_first() -> None:
    seen: list[Any] = []
    env = {"JUPYTERHUB_API_TOKEN": "hub-t", "JUPYTERHUB_SERVICE_URL": "http://:8888/user/ann/",
           "JPY_PARENT_PID": "222"}
    client = _discover(env, {"127.0.0.1", "parent.test"}, seen)
    assert client.kind == "hub" and client.base_url == "http://127.0.0.1:8888/user/ann/"
    assert client.token == "hub-t" and "JUPYTERHUB_SERVICE_URL" in client.source
    assert seen == [("127.0.0.1", "token hub-t")]


def test_discover_hub_without_the_extension_falls_back_and_lends_its_token() -> None:
    servers = [{"pid": 222, "url": "http://parent.test:8889/user/ann/", "token": ""}]
    seen: list[Any] = []
    client = discover(
        environ={"JUPYTERHUB_API_TOKEN": "hub-t", "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:1/",
                 "JPY_PARENT_PID": "222"},
        list_servers=lambda: servers,
        start_embedded=lambda: EMBEDDED,
        transport=_transport(seen, {"parent.test"}),
    )
    # the info file of a hub's single-user server has no token: the hub's is used
    assert client.kind == "parent" and client.token == "hub-t"
    assert seen == [("127.0.0.1", "token hub-t"), ("parent.test", "token hub-t")]


def test_discover_unix_socket_server_through_its_socket() -> None:
    servers = [{"pid": 333, "url": "http+unix://%2Ftmp%2Fj.sock/", "sock": "/tmp/j.sock",
                "base_url": "/base/", "token": "t-sock"}]
    seen: list[Any] = []
    client = discover(
        environ={"JPY_PARENT_PID": "333"},
        list_servers=lambda: servers,
        start_embedded=lambda: EMBEDDED,
        transport=_transport(seen, {"localhost"}),
    )
    assert client.kind == "parent" and client.uds == "/tmp/j.sock"
    assert client.base_url == "http://localhost/base/"
    assert "unix socket /tmp/j.sock" in client.source
    assert seen == [("localhost", "token t-sock")]


@pytest.mark.parametrize(
    ("bind", "reached"),
    [
        ("http://:8888/user/ann/", "http://127.0.0.1:8888/user/ann/"),
        ("http://0.0.0.0:8888/", "http://127.0.0.1:8888/"),
        ("http://[::]:9000/x", "http://127.0.0.1:9000/x/"),
        ("http://hub-node:8888/user/ann/", "http://hub-node:8888/user/ann/"),
    ],
)
def test_reachable_url(bind: str, reached: str) -> None:
    from lemonade_jupyter.kernel.discovery import reachable_url

    assert reachable_url(bind) == reached
