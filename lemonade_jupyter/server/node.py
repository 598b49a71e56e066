"""``lemonade-jupyter node``: one router for a whole GPU node, run by JupyterHub as a service.

Each user's own Jupyter server would otherwise start a router of its own, blind to the others,
and several routers would fight over one GPU. On a node, the Hub starts this command once as a
managed service (``c.JupyterHub.services``, see ``docs/jupyterhub_config.py``): the Hub restarts
it when it dies, its proxy serves it under ``/services/lemonade/``, and every user reaches it
with their own Hub identity.

Why a Jupyter server and not a bare tornado app: the router is a Jupyter server extension, and
the Hub already ships what authenticates Hub users in a Jupyter server (its identity provider,
``server/hub_auth.py``). So the node is the same extension in the same server, started with:

* where the Hub wants it: the address of ``$JUPYTERHUB_SERVICE_URL`` and the base URL
  ``$JUPYTERHUB_SERVICE_PREFIX``;
* the Hub's authentication (:class:`~.hub_auth.NodeIdentityProvider`: API tokens for programs,
  OAuth for a browser) and an authorizer that serves the lemonade routes only;
* ``LemonadeApp.node_mode``: every route checks the caller's ``custom:lemonade:*`` scopes, loads
  and pins record their owner, and the surface is locked down (``server/node_access.py``).

Extra arguments go to the Jupyter server as they are (``--LemonadeApp.data_dir=/srv/lemonade``);
the ones set here come after them, so a service definition cannot turn the Hub's auth off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

#: What the Hub sets in a managed service's environment and this command needs.
REQUIRED_ENV = ("JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL")

#: The service's path under the Hub's proxy when the Hub does not say.
DEFAULT_PREFIX = "/services/lemonade/"


class NodeConfigError(RuntimeError):
    """The environment is not a JupyterHub service's (the command was run by hand)."""


def node_argv(environ: Mapping[str, str], extra: Sequence[str] = ()) -> list[str]:
    """The Jupyter server's command line for a node router under the Hub described by
    ``environ``; raise NodeConfigError when it is not a Hub service's environment."""
    missing = [name for name in REQUIRED_ENV if not environ.get(name)]
    if missing:
        raise NodeConfigError(
            f"{', '.join(missing)} not set: run `lemonade-jupyter node` as a JupyterHub "
            "managed service (c.JupyterHub.services, see docs/jupyterhub.md)")
    url = urlsplit(environ["JUPYTERHUB_SERVICE_URL"])
    if url.scheme != "http" or not url.hostname or not url.port:
        raise NodeConfigError(
            "JUPYTERHUB_SERVICE_URL must be http://HOST:PORT (the service's 'url' in the "
            f"Hub's config), not {environ['JUPYTERHUB_SERVICE_URL']!r}")
    prefix = environ.get("JUPYTERHUB_SERVICE_PREFIX") or DEFAULT_PREFIX
    return [
        *extra,
        f"--ServerApp.ip={url.hostname}",
        f"--ServerApp.port={url.port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={prefix}",
        # A browser opening the service's address gets the router's page (server/node_page.py).
        "--ServerApp.default_url=/lemonade/page",
        "--ServerApp.open_browser=False",
        "--ServerApp.identity_provider_class="
        "lemonade_jupyter.server.hub_auth.NodeIdentityProvider",
        "--ServerApp.authorizer_class=lemonade_jupyter.server.hub_auth.NodeAuthorizer",
        "--ServerApp.terminals_enabled=False",
        "--ServerApp.jpserver_extensions=lemonade_jupyter=True",
        # A router that failed to start must stop the service (the Hub restarts it and says
        # so), not leave a Jupyter server without it.
        "--ServerApp.reraise_server_extension_failures=True",
        "--LemonadeApp.node_mode=True",
    ]


def run_node(extra: Sequence[str] = ()) -> int:
    """Run the node router's Jupyter server until it is stopped; 1 outside a Hub service."""
    try:
        argv = node_argv(os.environ, extra)
    except NodeConfigError as exc:
        print(f"lemonade-jupyter node: {exc}", file=sys.stderr)
        return 1
    from jupyter_server.serverapp import ServerApp

    ServerApp.launch_instance(argv=argv)
    return 0
