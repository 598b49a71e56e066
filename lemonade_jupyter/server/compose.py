"""The composition root: the router and the services around it, built in one place.

The Jupyter server extension (``server/app.py``) and the embedded router (``server/embedded.py``)
host the same HTTP API. They differ only in where the HTTP server comes from and how the data
folder is chosen and locked; everything else (the router, its catalog, the upstream pools, what
the handlers find in the tornado settings, the start and stop order) is built here, from the one
settings table (``core/settings.py``: :class:`RouterSettings` for the router,
:class:`ServerOptions` for the HTTP side). Wiring the two modes separately let them drift: an
option the server honoured was silently ignored by the embedded router.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from ..core.catalog import Catalog
from ..core.launcher import BackendLauncher
from ..core.owners import OwnerRegistry
from ..core.router import Router
from ..core.settings import RouterSettings, ServerOptions
from .node_access import server_user
from .remote_hosts import OwnServer, host_rules
from .remote_rest import drop_refused
from .remote_upstream import RemoteUpstream
from .upstream import UpstreamPool


@dataclass
class Services:
    """What one server runs: the router and the connection pools its handlers send through."""

    router: Router
    upstream: UpstreamPool
    remote_upstream: RemoteUpstream
    options: ServerOptions
    #: Who loaded and pinned what (in single-user mode: the server's user).
    owners: OwnerRegistry
    #: One router for every user of a JupyterHub (``lemonade-jupyter node``): callers are Hub
    #: users whose scopes are checked on every route.
    node_mode: bool = False

    def handler_settings(self) -> dict[str, object]:
        """The tornado application settings the handlers read (``self.settings[...]``)."""
        return {
            "lemonade_router": self.router,
            "lemonade_upstream": self.upstream,
            "lemonade_remote_upstream": self.remote_upstream,
            "lemonade_ping_interval_s": self.options.sse_ping_interval_s,
            "lemonade_stream_loading_state": self.options.stream_loading_state,
            "lemonade_owners": self.owners,
            "lemonade_node_mode": self.node_mode,
            "lemonade_server_user": None if self.node_mode else server_user(),
        }

    async def start(self, own: OwnServer) -> None:
        """Start the router once the server's own address is known (``own``): remote models kept
        from looser rules, or pointing back at this server, are dropped first."""
        await drop_refused(self.router, own)
        # And each connection to a remote host again, with the rules as they are then.
        self.remote_upstream.check_hosts(lambda: host_rules(self.router.settings, own))
        await self.router.start()

    async def stop(self) -> None:
        """Close the pools, then stop every backend (idempotent)."""
        self.upstream.close()
        await self.remote_upstream.close()
        await self.router.stop()
        await asyncio.to_thread(self.owners.close)


def build_services(
    settings: RouterSettings,
    options: ServerOptions,
    *,
    data_dir: Path,
    keep_state: bool = True,
    note: str = "",
    launcher: BackendLauncher | None = None,
) -> Services:
    """The router on ``data_dir`` and its pools, configured from ``settings`` and ``options``.

    ``keep_state`` False: another router holds ``data_dir`` (the router then restores and saves
    no state); ``note`` says so to the user (``/health``). ``launcher``: what starts backends,
    from code only (the test suite runs the whole app on an in-memory one); None starts
    ``llama-server`` processes.
    """
    router = Router(
        Catalog(data_dir),
        settings,
        llama_server_path=options.llama_server_path or None,
        data_dir=data_dir,
        keep_state=keep_state,
        launcher=launcher,
    )
    if note:
        router.notes.append(note)
    router.remote.ca_bundle = options.remote_ca_bundle or None
    owners = OwnerRegistry(data_dir if keep_state else None)
    router.events.add_listener(owners.on_event)
    router.events.owner_of = owners.get
    return Services(router, UpstreamPool(warm_streams=options.warm_stream_connections),
                    RemoteUpstream(), options, owners,
                    node_mode=options.node_mode)
