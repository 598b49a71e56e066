"""Hub identities for a node router: who calls, with which scopes, and nothing but lemonade.

Why this way: a JupyterHub service may authenticate its callers however it likes, and the Hub
ships a complete, maintained identity provider for Jupyter servers:
``jupyterhub.singleuser.extension.JupyterHubIdentityProvider`` (what ``jupyterhub-singleuser``
runs). It asks the Hub about an API token in the ``Authorization`` header (programs, kernels),
runs the OAuth login for a browser (redirect to the Hub, ``oauth_callback``, a cookie), patches
XSRF for cookie logins, and caches the Hub's answers. Writing our own on
``jupyterhub.services.auth.HubOAuth`` would repeat all of that. Two things differ for a node:

* **Access.** The single-user provider lets in holders of the service's ``access:services``
  scope. A node lets in any caller holding one of its custom scopes (``server/scopes.py``) or
  that access scope: which route each may use is decided per request (``node_access.py``),
  so a user without the right scope gets a 403 naming it rather than a bare refusal.
* **XSRF.** The Hub's provider swaps the Jupyter handlers' XSRF check for the Hub's, which
  cannot know yet that a request carries a token when tornado (6.6) checks XSRF before
  ``prepare``: every POST with an API token was refused. A node keeps Jupyter's own check,
  which waits for the user and skips token-authenticated requests.
* **Authorization.** The node runs a whole Jupyter server, whose own routes (kernels, contents,
  terminals) would run code as the service's user. :class:`NodeAuthorizer` allows the
  ``lemonade`` resource only: every other Jupyter route answers 403 to everyone.

Imported only in node mode (``lemonade-jupyter node``), where JupyterHub is installed.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyterhub.services.auth import HubOAuth
from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
from traitlets import default

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


class NodeAuthorizer(Authorizer):
    """Allow the lemonade routes to every Hub caller the identity provider let in; refuse
    every other resource of the Jupyter server (kernels, contents, terminals...)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource == RESOURCE and getattr(user, "hub_user", None) is not None
