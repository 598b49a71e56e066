"""The embedded router's client: one router per kernel process, started on first use.

``EmbeddedClient`` is a :class:`~.client.RouterClient` bound to an in-process router
(``lemonade_jupyter.server.embedded.EmbeddedServer``) that runs on its own thread and asyncio
loop, never on the kernel's. :func:`embedded_client` starts it on first use and
:func:`shutdown_embedded` (also run at exit) stops it and its backends. The server module is
imported only when the router starts: importing the kernel never loads the router.
"""

from __future__ import annotations

import atexit
import threading

from .client import RouterClient

__all__ = ["EmbeddedClient", "embedded_client", "shutdown_embedded"]


class EmbeddedClient(RouterClient):
    """A ``RouterClient`` bound to a router running inside this process.

    Starting imports ``lemonade_jupyter.server.embedded`` (lazily: the kernel never imports the
    server at import time) and blocks until the router serves on 127.0.0.1 from its own thread
    and loop. ``stop()`` stops its backends and joins that thread.
    """

    kind = "embedded"

    def __init__(self, *, timeout: float = 600.0) -> None:
        from ..server.embedded import EmbeddedServer  # lazy by contract, see module docstring

        self.server = EmbeddedServer()
        self.server.start()
        note = f" ({self.server.note})" if self.server.note else ""
        super().__init__(
            self.server.url,
            self.server.token,
            kind="embedded",
            timeout=timeout,
            source=f"embedded router in this kernel at {self.server.url}{note}",
        )

    def stop(self) -> None:
        """Close the client, then stop the embedded router and its backends (idempotent)."""
        self.close()
        self.server.stop()


_embedded: EmbeddedClient | None = None
_embedded_lock = threading.Lock()


def embedded_client() -> EmbeddedClient:
    """The process's embedded router client, started on first call."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            _embedded = EmbeddedClient()
            _stop_at_exit()
        return _embedded


def _stop_at_exit() -> None:
    """Stop the embedded router when the interpreter exits, before executors shut down.

    ``atexit`` handlers run *after* ``threading``'s exit hooks, which shut down the default
    executor the router's loop uses for ``asyncio.to_thread``; stopping there fails. So we use
    ``threading._register_atexit`` (what ``concurrent.futures`` itself uses; run in reverse
    order, so ours runs first), falling back to ``atexit`` if it is missing.
    """
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(shutdown_embedded)
            return
    except RuntimeError:  # interpreter already shutting down
        pass
    atexit.register(shutdown_embedded)


def shutdown_embedded() -> None:
    """Stop the embedded router this process started, if any (idempotent)."""
    global _embedded
    with _embedded_lock:
        client, _embedded = _embedded, None
    if client is not None:
        client.stop()
