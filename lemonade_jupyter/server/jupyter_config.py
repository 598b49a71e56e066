"""The ``c.LemonadeApp`` settings of the Jupyter server's config files, for the embedded router.

A kernel that finds no Jupyter server starts an embedded router; it should run with the
settings its user gave the server (``jupyter_server_config.py``/``.json`` and
``jupyter_server_config.d/*.json`` in each folder of ``jupyter --paths``), not with the
defaults. This reads the ``LemonadeApp`` section of those files as Jupyter does (the first
folder of the path wins, a ``.py`` file over a ``.json`` one) and checks it by the same traits
and rules as the server, so a bad value is the same error in both modes. ``data_dir`` is the
server's folder and is left to the embedded router's own rule.
"""

from __future__ import annotations

from pathlib import Path

from jupyter_core.paths import jupyter_config_path
from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader, PyFileConfigLoader

from ..core.settings import RouterSettings, ServerOptions

__all__ = ["configured_settings"]

BASENAME = "jupyter_server_config"


def _load(folder: Path) -> Config:
    """One folder's config: its ``.d/*.json`` files in order, the ``.json``, then the ``.py``."""
    config = Config()
    drop_ins = sorted((folder / f"{BASENAME}.d").glob("*.json"))
    loaders = [JSONFileConfigLoader(p.name, path=str(p.parent)) for p in drop_ins] + [
        JSONFileConfigLoader(f"{BASENAME}.json", path=str(folder)),
        PyFileConfigLoader(f"{BASENAME}.py", path=str(folder)),
    ]
    for loader in loaders:
        try:
            config.merge(loader.load_config())
        except ConfigFileNotFound:
            continue
    return config


def configured_settings(paths: list[str] | None = None) -> tuple[RouterSettings, ServerOptions]:
    """The router settings and server options the config files give (defaults otherwise).

    Raises ``traitlets.TraitError`` naming the setting (``c.LemonadeApp.NAME: ...``) for a bad
    value, like the server at start.
    """
    from .app import LemonadeApp  # the traits and their checks, generated from the table

    config = Config()
    for folder in reversed(paths if paths is not None else jupyter_config_path()):
        config.merge(_load(Path(folder)))
    section = Config({"LemonadeApp": config.get("LemonadeApp", Config())})
    app = LemonadeApp(config=section)
    return app.router_settings(), app.server_options()
