"""The hop guard: no request may come back to the router that forwarded it.

A remote model whose ``base_url`` reaches this very router (through another address, a port
forwarder, a reverse proxy) would forward each request to itself, which forwards it again,
without end: every hop holds a connection open while it waits for the next one. So every
request to an upstream (forwarded requests and probes alike) carries :data:`HOP_HEADER`: the
ids of the routers it went through, this one's last. Each router draws a random id at start;
a request that arrives with our own id in that header, or after :data:`MAX_HOPS` routers, is
refused at once (508 ``upstream_loop``), so a loop ends after one hop and a cycle of several
routers after one round. The ids are random per start and say nothing about the machine.
"""

from __future__ import annotations

import secrets

from ..errors import RemoteLoopError

#: The header listing the routers a request went through (comma-separated ids).
HOP_HEADER = "X-Lemonade-Hops"
#: Routers one request may go through; a longer chain is refused like a loop.
MAX_HOPS = 8
#: Characters an id has (:func:`secrets.token_hex` of 8 bytes).
_ID_CHARS = 16


class HopGuard:
    """This router's id, and the check of an incoming request's :data:`HOP_HEADER`."""

    def __init__(self, router_id: str | None = None) -> None:
        self.router_id = router_id or secrets.token_hex(_ID_CHARS // 2)

    def check(self, incoming: str | None) -> None:
        """Raise RemoteLoopError if a request with this header must not be served here."""
        hops = _parse(incoming)
        if self.router_id in hops:
            raise RemoteLoopError(
                "This request came back to the router that forwarded it: a remote model's "
                "base_url points at this Jupyter server (through another address or port). "
                "Delete that remote model or register it with another upstream")
        if len(hops) >= MAX_HOPS:
            raise RemoteLoopError(
                f"This request went through {len(hops)} lemonade routers already (at most "
                f"{MAX_HOPS}): remote models that point at each other form a cycle")

    def outgoing(self, incoming: str | None = None) -> dict[str, str]:
        """The header of a request sent on: the routers it came through, then this one."""
        return {HOP_HEADER: ",".join([*_parse(incoming)[-MAX_HOPS:], self.router_id])}


def _parse(value: str | None) -> list[str]:
    """The ids of a :data:`HOP_HEADER`; anything that is not an id is left out."""
    if not value:
        return []
    ids = [part.strip() for part in value[: (MAX_HOPS + 1) * (_ID_CHARS + 2)].split(",")]
    return [i for i in ids if len(i) == _ID_CHARS and all(c in "0123456789abcdef" for c in i)]
