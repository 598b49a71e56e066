"""lemonade_jupyter: a multi-model local LLM router inside Jupyter, with model pinning.

Entry points only: the Jupyter server extension (``LemonadeApp``), the IPython extension
(``%load_ext lemonade_jupyter``) and the OpenAI clients pointed at the router
(``openai_client()``, ``async_openai_client()``). Importing this package imports neither
Jupyter, the router nor ``openai``.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
__all__ = [
    "__version__",
    "load_ipython_extension",
    "unload_ipython_extension",
    "openai_client",
    "async_openai_client",
]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .server.app import LemonadeApp

    return [{"module": "lemonade_jupyter", "app": LemonadeApp}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext lemonade_jupyter``: register the ``%lemonade`` magics, and the input
    transformer that keeps a ``%lemonade chat ... ?`` line from being read as a help request."""
    from .kernel.chat import register_input_transformer
    from .kernel.magics import LemonadeMagics

    ipython.register_magics(LemonadeMagics)
    register_input_transformer(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop an embedded router this kernel may have started."""
    from .kernel.chat import unregister_input_transformer
    from .kernel.embedded_client import shutdown_embedded
    from .kernel.widgets import close_current_dashboard

    unregister_input_transformer(ipython)
    close_current_dashboard()
    shutdown_embedded()


def openai_client(**kwargs: Any) -> Any:
    """An ``openai.OpenAI`` pointed at the router this kernel uses, with the right key.

    The router of the ``%lemonade`` magics when they are loaded, else the one discovery finds
    (a Jupyter server with the extension, else an embedded router). Keyword arguments go to
    :func:`lemonade_jupyter.kernel.openai_support.openai_client` (``client``, ``mode``) or to
    ``openai.OpenAI``. Needs ``pip install openai``.
    """
    from .kernel.openai_support import openai_client as make

    return make(**kwargs)


def async_openai_client(**kwargs: Any) -> Any:
    """:func:`openai_client` for ``openai.AsyncOpenAI``."""
    from .kernel.openai_support import async_openai_client as make

    return make(**kwargs)
