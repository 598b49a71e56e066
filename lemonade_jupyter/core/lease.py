"""A lease: permission to send one request to a model's backend.

:meth:`Router.acquire <lemonade_jupyter.core.router.Router.acquire>` hands one out and
:meth:`Router.release <lemonade_jupyter.core.router.Router.release>` ends it; while it is held
the model counts the request as in flight, so it is never evicted under it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import Backend
from .live_model import LiveModel


@dataclass(frozen=True)
class Lease:
    """Permission to send one request to a model's backend; release it exactly once."""

    model: LiveModel
    backend: Backend
    #: Whether it holds one of the backend's parallel slots (a generation does; tokenizing
    #: does not).
    slot: bool = True

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def address(self) -> tuple[str, int]:
        return self.backend.address

    def headers(self) -> dict[str, str]:
        return self.backend.auth_headers()
