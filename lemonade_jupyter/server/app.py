"""``LemonadeApp``: the Jupyter server extension that hosts the router.

Nothing happens in the constructor (Jupyter builds the app even for ``jupyter server extension
list``). ``initialize_settings`` builds the router from the traits; the router's background
tasks start in ``_start_jupyter_server_extension`` once the server's loop runs; and
``stop_extension`` stops every backend.

The router's metrics also appear on Jupyter's own ``/metrics`` (prometheus_client's default
registry, where jupyter-resource-usage puts its series too): a collector that yields the
router's families is registered there while the extension runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import prometheus_client
from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from prometheus_client.registry import Collector
from traitlets import (
    Bool, Float, Int, List, TraitError, TraitType, Unicode, default, validate,
)

from ..core.catalog import Catalog
from ..core.owners import OwnerRegistry
from ..core.persistence import DataDirInUseError, DataDirLock
from ..core.router import Router
from ..core.settings import SETTINGS, RouterSettings, Setting, check_value, from_config
from ..core.validation import check_number
from ..errors import InvalidRequestError
from .routes import handlers
from .node_access import server_user
from .remote_hosts import own_server
from .remote_rest import drop_refused
from .remote_upstream import RemoteUpstream
from .upstream import UpstreamPool


def _setting_traits() -> dict[str, TraitType]:
    """One configurable trait per row of the settings table, with its default and help."""
    kinds = {bool: Bool, int: Int, float: Float}

    def trait(s: Setting) -> TraitType:
        if s.type is tuple:  # a list of strings
            return List(Unicode(), default_value=s.config_default, config=True, help=s.help)
        return kinds[s.type](s.config_default, config=True, help=s.help)

    return {s.name: trait(s) for s in SETTINGS}


class _RouterFamilies(Collector):
    """The router's metric families, yielded into another registry (Jupyter's ``/metrics``).

    ``describe`` is empty so that the default registry does not collect at registration to
    check names: the families belong to the router's own registry, which already checked them.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self._registry = registry

    def describe(self) -> list[object]:
        return []

    def collect(self):  # type: ignore[no-untyped-def]
        yield from self._registry.collect()


def _trait_error(name: str, exc: InvalidRequestError) -> TraitError:
    return TraitError(f"c.LemonadeApp.{name}: {exc.message}")


class LemonadeApp(ExtensionApp):
    """Multi-model llama.cpp router with pinning, under ``{base_url}lemonade/``."""

    name = "lemonade_jupyter"
    load_other_extensions = True

    # The router settings: one trait per row of ``core.settings.SETTINGS`` (a class body's
    # namespace is a plain dict, so the traits are declared here as if written out).
    locals().update(_setting_traits())

    llama_server_path = Unicode(
        "", config=True,
        help="Path of llama-server; empty: $LEMONADE_LLAMA_SERVER, PATH, then the cached build.",
    )
    data_dir = Unicode(
        config=True, help="Where pins, the loaded set and user models persist across restarts."
    )
    node_mode = Bool(
        False, config=True,
        help="One router for every user of a JupyterHub, run as a Hub service by "
        "`lemonade-jupyter node`: callers are Hub users whose custom:lemonade:* scopes are "
        "checked on every route, and the surface is locked down (docs/jupyterhub.md).",
    )
    stream_loading_state = Bool(
        False, config=True,
        help="Tell a streaming chat request that waits for a cold load the load's progress, "
        "as reasoning content before the answer (chat UIs show it as the model thinking).",
    )
    sse_ping_interval_s = Float(
        2.0, config=True,
        help="Seconds of silence (cold load, prefill) before a ': ping' SSE comment.",
    )

    remote_ca_bundle = Unicode(
        "", config=True,
        help="PEM file of CA certificates to trust for https remote models; empty: the "
        "system's store. Certificates are always verified.",
    )

    @validate(*(s.name for s in SETTINGS))
    def _validate_setting(self, proposal: dict) -> object:
        """Reject a bad value in the config file with the same rule as /internal/set."""
        name = proposal["trait"].name
        try:
            return check_value(name, proposal["value"])
        except InvalidRequestError as exc:
            raise _trait_error(name, exc) from None

    @validate("sse_ping_interval_s")
    def _validate_ping_interval(self, proposal: dict) -> float:
        """A ping interval of 0 or less (or NaN) would make every silent stream ping in a busy
        loop, writing ``: ping`` as fast as the socket takes it; refuse it at start."""
        try:
            return check_number(
                "sse_ping_interval_s", proposal["value"], minimum=0.001, maximum=3600
            )
        except InvalidRequestError as exc:
            raise _trait_error("sse_ping_interval_s", exc) from None

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "lemonade")

    def router_settings(self) -> RouterSettings:
        """The traits as the router's settings."""
        return from_config({s.name: getattr(self, s.name) for s in SETTINGS})

    def initialize_settings(self) -> None:
        if self.node_mode and self.allow_any_llamacpp_args:  # type: ignore[attr-defined]
            raise TraitError("c.LemonadeApp.allow_any_llamacpp_args cannot be on in node mode: "
                             "the node's users may set only the allowlisted flags")
        data_dir = Path(self.data_dir)
        note = self._take_data_dir(data_dir)
        self.router = Router(
            Catalog(data_dir),
            self.router_settings(),
            llama_server_path=self.llama_server_path or None,
            data_dir=data_dir,
            keep_state=not note,
        )
        if note:
            self.router.notes.append(note)
        self.router.remote.ca_bundle = self.remote_ca_bundle or None
        self.owners = OwnerRegistry(None if note else data_dir)  # who loaded and pinned what
        self.router.events.add_listener(self.owners.on_event)
        self.router.events.owner_of = self.owners.get
        self.upstream = UpstreamPool()
        self.remote_upstream = RemoteUpstream()
        self.settings.update({
            "lemonade_remote_upstream": self.remote_upstream,
            "lemonade_router": self.router,
            "lemonade_upstream": self.upstream,
            "lemonade_ping_interval_s": self.sse_ping_interval_s,
            "lemonade_stream_loading_state": self.stream_loading_state,
            "lemonade_owners": self.owners,
            "lemonade_node_mode": self.node_mode,
            "lemonade_server_user": None if self.node_mode else server_user(),
        })

    def _take_data_dir(self, data_dir: Path) -> str:
        """Lock the data folder for this server's router; '' or a note saying it is held.

        Two servers of one user (JupyterHub's named servers share a home) would otherwise both
        restore the pinned models, each into a backend of its own, and overwrite each other's
        state file. The second one still serves, models and pulls included, but keeps no
        router state (pins, loaded models, settings): it restores and saves none, and says so in
        the log and ``/health``. Registered models, remote models and aliases are shared.
        """
        self._data_lock = DataDirLock(data_dir)
        try:
            self._data_lock.acquire()
        except DataDirInUseError as exc:
            self._data_lock = None
            note = (f"{exc} This server's router restores and saves no state (pins, loaded "
                    "models, settings) while the other one runs.")
            self.log.warning("lemonade: %s", note)
            return note
        return ""

    def initialize_handlers(self) -> None:
        # Relative to the server's base_url, which ExtensionApp prepends.
        self.handlers.extend(handlers("/"))

    async def _start_jupyter_server_extension(self, serverapp: object) -> None:
        # Jupyter's port is known now: drop remote models kept from looser rules.
        await drop_refused(self.router, own_server({"serverapp": serverapp}))
        await self.router.start()
        self._jupyter_metrics = _RouterFamilies(self.router.metrics.registry)
        prometheus_client.REGISTRY.register(self._jupyter_metrics)
        self.log.info("lemonade router started (data in %s)", self.data_dir)

    async def stop_extension(self) -> None:
        bridge, self._jupyter_metrics = getattr(self, "_jupyter_metrics", None), None
        if bridge is not None:
            try:
                prometheus_client.REGISTRY.unregister(bridge)
            except KeyError:  # already gone
                pass
        upstream = getattr(self, "upstream", None)
        if upstream is not None:
            upstream.close()
        remote_upstream = getattr(self, "remote_upstream", None)
        if remote_upstream is not None:
            await remote_upstream.close()
        router = getattr(self, "router", None)
        if router is not None:
            await router.stop()
        owners = getattr(self, "owners", None)
        if owners is not None:
            await asyncio.to_thread(owners.close)
        lock, self._data_lock = getattr(self, "_data_lock", None), None
        if lock is not None:
            lock.release()
