"""``LemonadeApp``: the Jupyter server extension that hosts the router.

Nothing happens in the constructor (Jupyter builds the app even for ``jupyter server extension
list``). Its traits are the rows of the settings table (``core/settings.py``);
``initialize_settings`` locks the data folder and hands the traits to ``compose.build_services``
(the same wiring as the embedded router's); the router's background
tasks start in ``_start_jupyter_server_extension`` once the server's loop runs; and
``stop_extension`` stops every backend.

The router's metrics also appear on Jupyter's own ``/metrics`` (prometheus_client's default
registry, where jupyter-resource-usage puts its series too): a collector that yields the
router's families is registered there while the extension runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import prometheus_client
from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from prometheus_client.registry import Collector
from traitlets import Bool, Float, Int, List, TraitError, TraitType, Unicode, default, validate

from ..core.persistence import DataDirInUseError, DataDirLock
from ..core.settings import (
    SETTINGS, RouterSettings, ServerOptions, Setting, check_value, from_config,
    server_options_from_config,
)
from ..errors import InvalidRequestError
from . import on_node
from .compose import Services, build_services
from .remote_hosts import own_server
from .routes import handlers


def _setting_traits() -> dict[str, object]:
    """One configurable trait per row of the settings table, with its default and help; a row
    whose default comes from an environment variable also gets a dynamic default reading it
    (through :meth:`Setting.initial`, the one place that reads it)."""
    kinds = {bool: Bool, int: Int, float: Float, str: Unicode}

    def trait(s: Setting) -> TraitType:
        if s.type is tuple:  # a list of strings
            return List(Unicode(), default_value=s.config_default, config=True, help=s.help)
        return kinds[s.type](s.config_default, config=True, help=s.help)

    def initial(s: Setting) -> object:
        def value(self: object) -> object:
            try:
                found = s.initial()
            except InvalidRequestError as exc:
                raise _trait_error(s.name, exc) from None
            return s.none_as if found is None else found
        return default(s.name)(value)

    traits: dict[str, object] = {s.name: trait(s) for s in SETTINGS}
    traits.update({f"_initial_{s.name}": initial(s) for s in SETTINGS if s.env})
    return traits


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

    # Every setting: one trait per row of ``core.settings.SETTINGS``, router and server rows
    # alike (a class body's namespace is a plain dict, so the traits are declared here as if
    # written out).
    locals().update(_setting_traits())

    @validate(*(s.name for s in SETTINGS))
    def _validate_setting(self, proposal: dict) -> object:
        """Reject a bad value in the config file with the same rule as /internal/set."""
        name = proposal["trait"].name
        try:
            return check_value(name, proposal["value"])
        except InvalidRequestError as exc:
            raise _trait_error(name, exc) from None

    def router_settings(self) -> RouterSettings:
        """The traits as the router's settings."""
        return from_config({s.name: getattr(self, s.name) for s in SETTINGS})

    def server_options(self) -> ServerOptions:
        """The traits as the options of the HTTP side (engine path, data folder, streaming)."""
        return server_options_from_config({s.name: getattr(self, s.name) for s in SETTINGS})

    def data_folder(self) -> Path:
        """``data_dir``, or ``<jupyter data dir>/lemonade`` when it is empty."""
        return Path(self.data_dir).expanduser() if self.data_dir else (
            Path(jupyter_data_dir()) / "lemonade")

    def initialize_settings(self) -> None:
        if self.node_mode and self.allow_any_llamacpp_args:  # type: ignore[attr-defined]
            raise TraitError("c.LemonadeApp.allow_any_llamacpp_args cannot be on in node mode: "
                             "the node's users may set only the allowlisted flags")
        # A user's server on a node: the node's router serves it (server/on_node.py).
        try:
            self._node_url = "" if self.node_mode else on_node.node_router_url(os.environ)
        except on_node.NodeURLError as exc:
            raise TraitError(str(exc)) from None
        if self._node_url:
            self.log.info("lemonade: no router here; the node router at %s serves this hub",
                          self._node_url)
            return
        data_dir = self.data_folder()
        note = self._take_data_dir(data_dir)
        self.services = build_services(
            self.router_settings(), self.server_options(),
            data_dir=data_dir, keep_state=not note, note=note,
        )
        self.router = self.services.router
        self.settings.update(self.services.handler_settings())

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
        node_url = getattr(self, "_node_url", "")
        self.handlers.extend(on_node.handlers(node_url) if node_url else handlers("/"))

    async def _start_jupyter_server_extension(self, serverapp: object) -> None:
        if getattr(self, "_node_url", ""):
            return
        # Jupyter's port is known now: remote models may not point back at it.
        await self.services.start(own_server({"serverapp": serverapp,
                                              "lemonade_node_mode": self.node_mode}))
        self._jupyter_metrics = _RouterFamilies(self.router.metrics.registry)
        prometheus_client.REGISTRY.register(self._jupyter_metrics)
        self.log.info("lemonade router started (data in %s)", self.data_folder())

    async def stop_extension(self) -> None:
        bridge, self._jupyter_metrics = getattr(self, "_jupyter_metrics", None), None
        if bridge is not None:
            try:
                prometheus_client.REGISTRY.unregister(bridge)
            except KeyError:  # already gone
                pass
        services: Services | None = getattr(self, "services", None)
        if services is not None:
            await services.stop()
        lock, self._data_lock = getattr(self, "_data_lock", None), None
        if lock is not None:
            lock.release()
