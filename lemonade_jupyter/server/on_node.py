"""A user's own Jupyter server on a node: no router of its own, only a pointer to the node's.

On a GPU node one router serves every user of the hub (``server/node.py``). Each user's
single-user server loads this extension too (it is enabled for the whole Python environment),
and without this switch it would start a router of its own, blind to the node's, whose models
would fight the node's over the same GPU. The hub's spawner says where the node is in
:data:`NODE_URL_ENV` (``docs/jupyterhub_config.py``); a server that has it starts no router and
no backend, and its ``lemonade/`` routes answer 404 naming the node. Its kernels inherit the
variable, so ``%lemonade``, the dashboard, ``Chat`` and ``openai_client()`` go to the node with
the server's own Hub token (``kernel/discovery.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from ..api_paths import ROUTE_PREFIX
from ..errors import error_body

#: Set by the hub's spawner in each user's server: the node router's address through the
#: hub's proxy (``http(s)://HUB/services/lemonade/``).
NODE_URL_ENV = "LEMONADE_JUPYTER_NODE_URL"


class NodeURLError(ValueError):
    """The spawner's :data:`NODE_URL_ENV` is not an http(s) URL."""


def node_router_url(environ: Mapping[str, str]) -> str:
    """The node router's URL this server defers to, ending with a slash; '' when none is set.
    Raise NodeURLError for anything but an ``http``/``https`` URL with a host."""
    url = environ.get(NODE_URL_ENV, "").strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeURLError(f"${NODE_URL_ENV} must be the node router's http(s) URL "
                           f"(http://HUB/services/lemonade/), not {url!r}")
    return url if url.endswith("/") else url + "/"


class NodeElsewhereHandler(APIHandler):
    """Every ``lemonade/`` route of a user's server on a node: 404 naming the node router."""

    auth_resource = "lemonade"

    def initialize(self, node_url: str) -> None:
        self.node_url = node_url

    def _answer(self, *_args: Any, **_kwargs: Any) -> None:
        if self.current_user is None:
            raise web.HTTPError(403)
        self.set_status(404)
        self.finish(json.dumps(error_body(
            "This Jupyter server runs no lemonade router: the node router at "
            f"{self.node_url} serves every user of this hub (${NODE_URL_ENV}). This server's "
            "kernels reach it there with the user's Hub token.",
            "not_found_error", code="router_on_node")))

    get = post = put = patch = delete = _answer


def handlers(node_url: str) -> list[tuple[str, type, dict[str, Any]]]:
    """One handler for every path under ``lemonade/`` (relative to the server's base URL)."""
    return [(url_path_join("/", ROUTE_PREFIX, "(.*)"), NodeElsewhereHandler,
             {"node_url": node_url})]
