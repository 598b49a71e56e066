"""Which router this kernel talks to.

Order (issue 5):

1. ``LEMONADE_JUPYTER_URL`` (+ ``LEMONADE_JUPYTER_TOKEN``) from the environment, else
   ``c.LemonadeMagics.server_url`` / ``token``: used as given, no probing.
2. The Jupyter server this kernel belongs to: the server info file
   (``jupyter_server.serverapp.list_running_servers``) whose ``pid`` is the kernel's
   ``JPY_PARENT_PID`` (jupyter_client sets it to the pid of the process that launched the
   kernel), if it answers ``lemonade/api/v1/health``.
3. Any other running Jupyter server that answers ``lemonade/api/v1/health``.
4. An embedded router in this process (plain IPython, nbclient, a kernel of a server without
   the extension).

``mode="server"`` stops after step 3 with an error; ``mode="embedded"`` goes straight to 4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from ..errors import ClientError
from .client import RouterClient, embedded_client

__all__ = ["discover", "running_servers"]

ENV_URL = "LEMONADE_JUPYTER_URL"
ENV_TOKEN = "LEMONADE_JUPYTER_TOKEN"


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
    url = info.get("url")
    if not url or info.get("sock"):
        return None  # unix-socket servers are not reachable with a plain URL
    url = str(url)
    return url if url.endswith("/") else url + "/"


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
    if server_url:
        return RouterClient(
            server_url,
            token or "",
            kind="config",
            timeout=timeout,
            transport=transport,
            source=f"{server_url} (from c.LemonadeMagics.server_url)",
        )

    servers = [dict(s) for s in list_servers()]
    parent = str(env.get("JPY_PARENT_PID", ""))
    notes = []
    ordered = sorted(servers, key=lambda s: str(s.get("pid")) != parent)  # the parent first
    for info in ordered:
        url = _server_url(info)
        if url is None:
            continue
        is_parent = bool(parent) and str(info.get("pid")) == parent
        if is_parent:
            source = (
                f"this kernel's Jupyter server at {url} (pid {info.get('pid')}, JPY_PARENT_PID)"
            )
            kind = "parent"
        else:
            source = f"a running Jupyter server at {url} (pid {info.get('pid')}, answers health)"
            kind = "running"
        client = RouterClient(
            url,
            str(info.get("token") or ""),
            kind=kind,
            source=source,
            timeout=timeout,
            transport=transport,
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
