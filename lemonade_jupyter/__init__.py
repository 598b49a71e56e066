"""lemonade_jupyter: a multi-model local LLM router inside Jupyter, with model pinning.

Entry points only: the Jupyter server extension (``LemonadeApp``) and the IPython extension
(``%load_ext lemonade_jupyter``). Importing this package imports neither Jupyter nor the router.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .server.app import LemonadeApp

    return [{"module": "lemonade_jupyter", "app": LemonadeApp}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext lemonade_jupyter``: register the ``%lemonade`` magics."""
    from .kernel.magics import LemonadeMagics

    ipython.register_magics(LemonadeMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop an embedded router this kernel may have started."""
    from .kernel.client import shutdown_embedded

    shutdown_embedded()
