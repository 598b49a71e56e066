"""Which router this kernel talks to.

Order:

1. ``LEMONADE_JUPYTER_URL`` (+ ``LEMONADE_JUPYTER_TOKEN``) from the environment, else
   ``LEMONADE_JUPYTER_NODE_URL`` (a hub's spawner sets it on a GPU node: the node router, as
   the user, with ``LEMONADE_JUPYTER_TOKEN`` or else the server's ``JUPYTERHUB_API_TOKEN``),
   else ``c.LemonadeMagics.server_url`` / ``token``: used as given, no probing.
2. Under JupyterHub (the single-user server passes ``JUPYTERHUB_API_TOKEN`` and
   ``JUPYTERHUB_SERVICE_URL`` to its kernels): that server, with the hub token, if it answers
   ``lemonade/api/v1/health``. A bind address such as ``http://:8888/user/x/`` or
   ``http://0.0.0.0:8888/...`` is reached on the loopback address.
3. The Jupyter server this kernel belongs to: the server info file
   (``jupyter_server.serverapp.list_running_servers``) whose ``pid`` is the kernel's
   ``JPY_PARENT_PID`` (jupyter_client sets it to the pid of the process that launched the
   kernel), if it answers ``lemonade/api/v1/health``.
4. Any other running Jupyter server that answers ``lemonade/api/v1/health``.
5. An embedded router in this process (plain IPython, nbclient, a kernel of a server without
   the extension).

Servers listening on a unix socket (``jupyter server --sock PATH``; their info file has
``sock``) are reached through that socket. A server whose info file has no token (a hub's
single-user server authenticates through the hub) gets ``JUPYTERHUB_API_TOKEN`` when there is
one. ``mode="server"`` stops after step 4 with an error; ``mode="embedded"`` goes straight to 5.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..errors import ClientError
from .client import RouterClient
from .embedded_client import embedded_client

__all__ = ["discover", "running_servers"]

ENV_URL = "LEMONADE_JUPYTER_URL"
ENV_TOKEN = "LEMONADE_JUPYTER_TOKEN"
HUB_TOKEN = "JUPYTERHUB_API_TOKEN"
HUB_SERVICE_URL = "JUPYTERHUB_SERVICE_URL"
HUB_USER = "JUPYTERHUB_USER"
#: Same name as ``server/on_node.NODE_URL_ENV`` (kernel code imports nothing of the server).
ENV_NODE_URL = "LEMONADE_JUPYTER_NODE_URL"


def running_servers() -> list[dict[str, Any]]:
    """Server info dicts of the Jupyter servers running for this user (runtime dir)."""
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:  # a kernel without jupyter_server installed
        return []
    try:
        return [dict(info) for info in list_running_servers()]
    except OSError:
        return []


def _server_url(info: Mapping[str, Any]) -> str | None:
    """The URL to reach a server by; for a unix-socket server, ``http://localhost{base_url}``
    (the socket itself goes to the transport)."""
    if info.get("sock"):
        base = str(info.get("base_url") or "/")
        return "http://localhost" + (base if base.startswith("/") else "/" + base)
    url = info.get("url")
    if not url:
        return None
    url = str(url)
    return url if url.endswith("/") else url + "/"


def reachable_url(url: str) -> str:
    """A bind URL as a client reaches it: an empty or wildcard host becomes the loopback."""
    parts = urlsplit(url if "//" in url else "http://" + url)
    host = parts.hostname or ""
    if host in ("", "0.0.0.0", "::", "*"):
        netloc = "127.0.0.1" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    out = urlunsplit(parts)
    return out if out.endswith("/") else out + "/"


def _answers_health(client: RouterClient, timeout: float) -> bool:
    try:
        client.health(timeout=timeout)
    except ClientError:
        return False
    return True


def discover(
    *,
    server_url: str | None = None,
    token: str | None = None,
    mode: str = "auto",
    timeout: float = 600.0,
    probe_timeout: float = 3.0,
    environ: Mapping[str, str] | None = None,
    list_servers: Callable[[], Iterable[Mapping[str, Any]]] = running_servers,
    start_embedded: Callable[[], RouterClient] = embedded_client,
    transport: httpx.BaseTransport | None = None,
) -> RouterClient:
    """Find the router for this kernel, following the order in the module docstring.

    Returns a connected ``RouterClient`` whose ``kind`` and ``source`` say which one was chosen.
    Raises ``ClientError`` when ``mode="server"`` and no server answers. ``list_servers``,
    ``start_embedded`` and ``transport`` are seams for tests.
    """
    env = os.environ if environ is None else environ
    if mode not in ("auto", "server", "embedded"):
        raise ValueError(f"mode must be 'auto', 'server' or 'embedded', not {mode!r}")
    if mode == "embedded":
        return start_embedded()

    if env.get(ENV_URL):
        url = env[ENV_URL]
        return RouterClient(
            url,
            env.get(ENV_TOKEN, token or ""),
            kind="env",
            timeout=timeout,
            transport=transport,
            source=f"{url} (from ${ENV_URL})",
        )
    if env.get(ENV_NODE_URL):
        url = env[ENV_NODE_URL]
        user = env.get(HUB_USER, "")
        return RouterClient(
            url,
            env.get(ENV_TOKEN) or env.get(HUB_TOKEN) or token or "",
            kind="node",
            timeout=timeout,
            transport=transport,
            source=f"node router at {url}" + (f", as {user}" if user else ""),
        )
    if server_url:
        return RouterClient(
            server_url,
            token or "",
            kind="config",
            timeout=timeout,
            transport=transport,
            source=f"{server_url} (from c.LemonadeMagics.server_url)",
        )

    notes = []
    hub_token = env.get(HUB_TOKEN, "")
    if hub_token and env.get(HUB_SERVICE_URL):
        url = reachable_url(env[HUB_SERVICE_URL])
        client = RouterClient(
            url,
            hub_token,
            kind="hub",
            timeout=timeout,
            transport=transport,
            source=f"this kernel's JupyterHub server at {url} (${HUB_SERVICE_URL})",
        )
        if _answers_health(client, probe_timeout):
            return client
        client.close()
        notes.append(f"the JupyterHub server at {url} has no lemonade extension")

    servers = [dict(s) for s in list_servers()]
    parent = str(env.get("JPY_PARENT_PID", ""))
    ordered = sorted(servers, key=lambda s: str(s.get("pid")) != parent)  # the parent first
    for info in ordered:
        url = _server_url(info)
        if url is None:
            continue
        sock = str(info.get("sock") or "") or None
        where = f"{url} on unix socket {sock}" if sock else url
        is_parent = bool(parent) and str(info.get("pid")) == parent
        if is_parent:
            source = (
                f"this kernel's Jupyter server at {where} (pid {info.get('pid')}, JPY_PARENT_PID)"
            )
            kind = "parent"
        else:
            source = (
                f"a running Jupyter server at {where} (pid {info.get('pid')}, answers health)"
            )
            kind = "running"
        client = RouterClient(
            url,
            str(info.get("token") or "") or hub_token,
            kind=kind,
            source=source,
            timeout=timeout,
            transport=transport,
            uds=sock,
        )
        if _answers_health(client, probe_timeout):
            return client
        client.close()
        if is_parent:
            notes.append(f"this kernel's server at {url} has no lemonade extension")

    if mode == "server":
        raise ClientError(
            503,
            None,
            "No Jupyter server with the lemonade extension was found"
            + (f" ({'; '.join(notes)})" if notes else ""),
        )
    return start_embedded()
