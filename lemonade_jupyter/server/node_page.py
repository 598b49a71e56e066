"""``GET lemonade/page``: the router's web page, for people (the JSON routes are for programs).

On a node (``server/node.py``) the Hub's users open ``/services/lemonade/`` in a browser: the
Jupyter server redirects there to this page (``node_argv`` sets ``default_url``), and a browser
that has not logged in yet is sent through the Hub's OAuth login (``{prefix}login``,
``server/hub_auth.py``) and comes back here. A program without credentials still gets the 403
JSON envelope, like on every other route.

Why a static page with a little JS rather than HTML rendered per request: everything it shows
already comes out of the JSON API (``/health``, ``/stats``, ``/events``) and the page keeps
itself current by reading it with the browser's own session, so there is one source of truth
and nothing to re-render here. The server adds only what the API does not say: who the caller
is, whether they may pin, unpin and unload anyone's model (node admins; the one user of a
single-user server), and the XSRF token its buttons send (Jupyter's XSRF check stays on for
cookie logins). The page loads nothing from elsewhere: its script and style are inline,
allowed by a per-response nonce in its Content-Security-Policy, and it reaches only its own
server.
"""

from __future__ import annotations

import json
import secrets
from functools import lru_cache
from importlib import resources
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httputil import url_concat

from ..api_paths import API_V1, ROUTE_PREFIX
from .base import LemonadeHandler
from .node_access import caller_of

#: The page's template, shipped as package data beside this module.
TEMPLATE = "static/router_page.html"


@lru_cache(maxsize=1)
def _template() -> str:
    return (resources.files(__package__) / TEMPLATE).read_text(encoding="utf-8")


def page_config(*, base_url: str, user: str, admin: bool, node: bool, xsrf: str) -> dict[str, Any]:
    """What the page's script needs to know that the JSON API does not tell it."""
    root = url_path_join(base_url, ROUTE_PREFIX)
    return {
        "api": url_path_join(base_url, API_V1) + "/",
        "pin": url_path_join(root, "internal", "pin"),
        "user": user,
        "admin": admin,
        "node": node,
        "xsrf": xsrf,
    }


def render_page(config: dict[str, Any], nonce: str) -> str:
    """The page with ``config`` embedded as JSON (safe inside a script element: ``<``, ``>``
    and ``&`` are escaped, so no value can close it) and ``nonce`` on its script and style."""
    data = (json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))
    return _template().replace("{{nonce}}", nonce).replace("{{config}}", data)


class RouterPageHandler(LemonadeHandler):
    """``GET lemonade/page``: the HTML page; a browser without a login goes to ``login``."""

    @property
    def content_security_policy(self) -> str:
        """Only this response's inline script and style, and requests to this server."""
        return ("default-src 'none'; "
                f"script-src 'nonce-{self._nonce}'; style-src 'nonce-{self._nonce}'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'self'")

    @property
    def _nonce(self) -> str:
        # Read while tornado builds the default headers, before initialize() runs.
        if not hasattr(self, "_page_nonce"):
            self._page_nonce = secrets.token_urlsafe(16)
        return self._page_nonce

    async def prepare(self) -> None:  # type: ignore[override]
        try:
            await super().prepare()
        except web.HTTPError as exc:
            if exc.status_code == 403 and self._browser_without_login():
                self.redirect(url_concat(url_path_join(self.base_url, "login"),
                                         {"next": self.request.uri or self.request.path}))
                return
            raise

    def _browser_without_login(self) -> bool:
        accept = self.request.headers.get("Accept", "")
        return (self.request.method == "GET" and "text/html" in accept
                and self.current_user is None)

    @web.authenticated
    @authorized
    async def get(self) -> None:
        node = bool(self.settings.get("lemonade_node_mode"))
        if node:
            caller = caller_of(self.current_user)
            user, admin = caller.name, caller.is_admin
        else:  # a single-user server: its one user may do everything
            user = str(self.settings.get("lemonade_server_user") or "")
            admin = True
        config = page_config(base_url=self.base_url, user=user, admin=admin, node=node,
                             xsrf=self.xsrf_token.decode("ascii"))
        self.set_header("Cache-Control", "no-store")
        # APIHandler.finish would label it JSON otherwise.
        self.finish(render_page(config, self._nonce),
                    set_content_type="text/html; charset=utf-8")
