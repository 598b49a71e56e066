"""Hub identities for a node router: who calls, with which scopes, and nothing but lemonade.

Why this way: a JupyterHub service may authenticate its callers however it likes, and the Hub
ships a complete, maintained identity provider for Jupyter servers:
``jupyterhub.singleuser.extension.JupyterHubIdentityProvider`` (what ``jupyterhub-singleuser``
runs). It asks the Hub about an API token in the ``Authorization`` header (programs, kernels),
runs the OAuth login for a browser (redirect to the Hub, ``oauth_callback``, a cookie), patches
XSRF for cookie logins, and caches the Hub's answers. Writing our own on
``jupyterhub.services.auth.HubOAuth`` would repeat all of that. Four things differ for a node:

* **Access.** The single-user provider lets in holders of the service's ``access:services``
  scope. A node lets in any caller holding one of its custom scopes (``server/scopes.py``) or
  that access scope: which route each may use is decided per request (``node_access.py``),
  so a user without the right scope gets a 403 naming it rather than a bare refusal.
* **XSRF.** The Hub's provider swaps the Jupyter handlers' XSRF check for the Hub's, which
  cannot know yet that a request carries a token when tornado (6.6) checks XSRF before
  ``prepare``: every POST with an API token was refused (found by ``tests/hub_node``). A node
  keeps Jupyter's own check, which waits for the user and skips token-authenticated requests.
* **Login.** The single-user provider starts the OAuth login when a page handler redirects to
  its login URL; a node has API routes only (they answer 403, never a redirect), so it adds
  ``{prefix}login``: a browser sent there goes through the Hub's OAuth and comes back with the
  node's cookie, to ``?next=`` (a path under the node only) or to ``/health``.
* **Authorization.** The node runs a whole Jupyter server, whose own routes (kernels, contents,
  terminals) would run code as the service's user. :class:`NodeAuthorizer` allows the
  ``lemonade`` resource only: every other Jupyter route answers 403 to everyone.

Imported only in node mode (``lemonade-jupyter node``), where JupyterHub is installed.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from jupyterhub.services.auth import HubOAuth
from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
from tornado.httputil import url_concat
from traitlets import default

from ..api_paths import API_V1
from .scopes import ALL_SCOPES

#: The only Jupyter authorization resource a node serves (``LemonadeHandler.auth_resource``).
RESOURCE = "lemonade"


class _NodeHubOAuth(HubOAuth):
    """The Hub's OAuth client, leaving Jupyter's XSRF check in place."""

    def _patch_xsrf(self, handler: Any) -> None:
        return


class NodeIdentityProvider(JupyterHubIdentityProvider):
    """The Hub's identity provider, letting in holders of any ``custom:lemonade:*`` scope."""

    @default("hub_auth")
    def _default_hub_auth(self) -> HubOAuth:
        auth = _NodeHubOAuth(parent=self)
        # The service's own access scope (from $JUPYTERHUB_OAUTH_ACCESS_SCOPES) or any of ours.
        auth.access_scopes = set(auth.access_scopes) | set(ALL_SCOPES)
        return auth

    def _patch_xsrf(self, handler: Any) -> None:
        """Keep Jupyter's XSRF check (see the module's docstring)."""
        return

    def get_handlers(self) -> list[tuple[Any, ...]]:
        """The Hub's logout and OAuth callback, and the node's login."""
        return [*super().get_handlers(), ("/login", NodeLoginHandler)]


class NodeLoginHandler(JupyterHandler):
    """``GET {prefix}login[?next=PATH]``: start the Hub's OAuth login in a browser."""

    @allow_unauthenticated
    def get(self) -> None:
        auth = self.identity_provider.hub_auth  # type: ignore[attr-defined]
        prefix = auth.base_url
        wanted = self.get_argument("next", "")
        # Only a path of this node: never an open redirect to another site or service.
        next_url = (wanted if wanted.startswith(prefix) and "//" not in wanted
                    and "\\" not in wanted else url_path_join(prefix, API_V1, "health"))
        params: dict[str, str] = {}
        # PKCE came with JupyterHub 6; a Hub 5 knows neither the setting nor the verifier.
        if getattr(auth, "pkce_enabled", False):
            verifier, challenge, method = auth.generate_pkce_code_challenge()
            params.update(code_challenge=challenge, code_challenge_method=method)
            params["state"] = auth.set_state_cookie(self, next_url=next_url,
                                                    code_verifier=verifier)
        else:
            params["state"] = auth.set_state_cookie(self, next_url=next_url)
        self.redirect(url_concat(auth.login_url, params))


class NodeAuthorizer(Authorizer):
    """Allow the lemonade routes to every Hub caller the identity provider let in; refuse
    every other resource of the Jupyter server (kernels, contents, terminals...)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource == RESOURCE and getattr(user, "hub_user", None) is not None
