"""A user's server on a node and its kernels: where the node router is, who the kernel is
there, and the node page's embedded settings (no value can break out of its script)."""

from __future__ import annotations

import json
import re

import pytest

from lemonade_jupyter.kernel.discovery import discover
from lemonade_jupyter.server.node_page import page_config, render_page
from lemonade_jupyter.server.on_node import NODE_URL_ENV, NodeURLError, node_router_url

NODE = "http://hub.example:8000/services/lemonade/"


def _no_servers() -> list[dict[str, str]]:
    return []


def _no_embedded():  # type: ignore[no-untyped-def]
    raise AssertionError("no embedded router on a node")


def test_on_node_url_is_an_http_url_with_a_host():
    assert node_router_url({}) == ""
    assert node_router_url({NODE_URL_ENV: NODE}) == NODE
    assert node_router_url({NODE_URL_ENV: NODE.rstrip("/")}) == NODE
    for bad in ("file:///etc/passwd", "ftp://hub/x/", "http:///nohost/", "hub:8000/services/"):
        with pytest.raises(NodeURLError, match=NODE_URL_ENV):
            node_router_url({NODE_URL_ENV: bad})


def test_on_node_discovery_uses_the_node_with_the_servers_hub_token():
    client = discover(environ={
        NODE_URL_ENV: NODE, "JUPYTERHUB_API_TOKEN": "server-token", "JUPYTERHUB_USER": "alice",
        # the user's own server: it has no router, and the node comes first
        "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:9/user/alice/",
    }, list_servers=_no_servers, start_embedded=_no_embedded)
    try:
        assert client.kind == "node"
        assert client.source == f"node router at {NODE}, as alice"
        assert client.base_url == NODE
        assert client.token == "server-token"
    finally:
        client.close()


def test_on_node_an_explicit_router_url_still_wins():
    client = discover(environ={
        NODE_URL_ENV: NODE, "JUPYTERHUB_API_TOKEN": "server-token",
        "LEMONADE_JUPYTER_URL": "http://127.0.0.1:9/", "LEMONADE_JUPYTER_TOKEN": "mine",
    }, list_servers=_no_servers, start_embedded=_no_embedded)
    try:
        assert client.kind == "env" and client.token == "mine"
    finally:
        client.close()


def test_node_page_config_cannot_close_its_script():
    config = page_config(base_url="/services/lemonade/", user="</script><b>&x",
                         admin=False, node=True, xsrf="2|abc")
    html = render_page(config, "NONCE")
    (embedded,) = re.findall(
        r'<script id="lemonade-config" type="application/json">(.*?)</script>', html, re.S)
    assert json.loads(embedded) == config
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    assert config["api"] == "/services/lemonade/lemonade/api/v1/"
    assert config["pin"] == "/services/lemonade/lemonade/internal/pin"
    assert html.count('nonce="NONCE"') == 2  # the style and the script, nothing else runs
