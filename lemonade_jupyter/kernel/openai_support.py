"""The official ``openai`` client, pointed at the router this kernel uses.

``openai_client()`` returns an ``openai.OpenAI`` whose ``base_url`` is the router's
``{base_url}lemonade/api/v1`` and whose ``api_key`` is the token that router wants: the Jupyter
server's (or the hub's) token for a server, the embedded router's own random token otherwise.
A server on a unix socket is reached through that socket. ``async_openai_client()`` is the
same for ``openai.AsyncOpenAI``.

The router is the one the ``%lemonade`` magics of the running IPython use, when they are
loaded (so ``c.LemonadeMagics.*`` applies), else the one discovery finds. ``openai`` is
imported only here, when asked for: it is not needed to import ``lemonade_jupyter``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ..api_paths import API_V1
from .client import RouterClient

__all__ = ["openai_client", "async_openai_client", "router_client", "openai_base_url"]

_MISSING = (
    "lemonade_jupyter.openai_client() needs the openai package, which is not installed: "
    "pip install openai"
)


def router_client(mode: str | None = None) -> RouterClient:
    """The router client of the loaded ``%lemonade`` magics, else a discovered one."""
    if mode is None and "IPython" in sys.modules:
        from IPython import get_ipython

        shell = get_ipython()
        magics = None
        if shell is not None:
            magics = shell.magics_manager.registry.get("LemonadeMagics")
        if magics is not None:
            return magics.client  # type: ignore[no-any-return]
    from .discovery import discover

    return discover(mode=mode or "auto")


def openai_base_url(client: RouterClient) -> str:
    """The ``base_url`` an OpenAI client needs for this router."""
    return client.base_url + API_V1


def _import_openai() -> Any:
    try:
        return importlib.import_module("openai")
    except ImportError:
        raise ImportError(_MISSING) from None


def _httpx_of(openai: Any) -> Any:
    """The httpx module the installed openai builds its clients from (it may be a fork)."""
    base = openai.DefaultHttpxClient.__mro__[1]
    return importlib.import_module(base.__module__.split(".")[0])


def _arguments(
    openai: Any, client: RouterClient | None, mode: str | None, kwargs: dict[str, Any],
    *, asynchronous: bool,
) -> dict[str, Any]:
    router = client if client is not None else router_client(mode)
    kwargs.setdefault("base_url", openai_base_url(router))
    kwargs.setdefault("api_key", router.token or "none")
    if router.uds and "http_client" not in kwargs:
        httpx = _httpx_of(openai)
        if asynchronous:
            transport = httpx.AsyncHTTPTransport(uds=router.uds)
            kwargs["http_client"] = openai.DefaultAsyncHttpxClient(transport=transport)
        else:
            kwargs["http_client"] = openai.DefaultHttpxClient(
                transport=httpx.HTTPTransport(uds=router.uds)
            )
    return kwargs


def openai_client(
    client: RouterClient | None = None, *, mode: str | None = None, **kwargs: Any
) -> Any:
    """An ``openai.OpenAI`` for the router (see the module docstring).

    ``client``: a ``RouterClient`` to use instead of the magics' or discovery's; ``mode``:
    ``auto``, ``server`` or ``embedded``, to run discovery in that mode. Other keyword
    arguments go to ``openai.OpenAI`` (they win over ours). Raises ``ImportError`` naming
    ``pip install openai`` when the package is missing.
    """
    openai = _import_openai()
    return openai.OpenAI(**_arguments(openai, client, mode, dict(kwargs), asynchronous=False))


def async_openai_client(
    client: RouterClient | None = None, *, mode: str | None = None, **kwargs: Any
) -> Any:
    """An ``openai.AsyncOpenAI`` for the router; arguments as :func:`openai_client`."""
    openai = _import_openai()
    return openai.AsyncOpenAI(**_arguments(openai, client, mode, dict(kwargs), asynchronous=True))
