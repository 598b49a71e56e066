"""Where a remote model may point, checked with what only the server knows: its own ports and
names, what a host name resolves to, and which addresses are this machine's.

The rules themselves are pure (``core/remote_rules.py``); this module feeds them. Jupyter picks
its port after the extension loads, so the own endpoint is read from the tornado application's
settings at each check: Jupyter's ``serverapp`` (its ``port`` and ``ip``), or the embedded
router's ``lemonade_own_port``.

A host name is resolved on the loop's resolver (never blocking the loop) with a bound on time
and on the addresses considered; a name that does not resolve now is judged by its name alone
(the replica is then simply down). Whether an address is this machine's is asked of the
operating system: only a local address can be bound.

A name is checked when a remote model is registered, and again each time a connection to it
is opened (:class:`CheckedResolver`, the resolver of the remote connection pool): a name that
resolved to a public address then may resolve to this machine later (DNS rebinding), and the
connection is refused by the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..core.remote_rules import HostRules, IPAddress, canonical_address, ip_literal
from ..core.remote_spec import ReplicaSpec, url_endpoint
from ..errors import InvalidRequestError, LockedDownError

#: Seconds a host name may take to resolve before it is judged by its name alone.
RESOLVE_TIMEOUT_S = 5.0
#: Addresses of one host name looked at (a name may resolve to many).
MAX_ADDRESSES = 32
#: Where the embedded router puts its own port in the tornado application's settings.
OWN_PORT_SETTING = "lemonade_own_port"


@dataclass(frozen=True)
class OwnServer:
    """The ports this server listens on and the names it goes by (besides its addresses)."""

    ports: frozenset[int]
    names: frozenset[str]
    #: A node router: every port of this machine is refused (HostRules.node).
    node: bool = False


def own_server(app_settings: Mapping[str, Any]) -> OwnServer:
    """This server's own endpoint, read now from the tornado application's settings."""
    ports: set[int] = set()
    names = {"localhost", socket.gethostname().lower()}
    serverapp = app_settings.get("serverapp")
    if serverapp is not None:
        if getattr(serverapp, "port", None):
            ports.add(int(serverapp.port))
        if getattr(serverapp, "ip", ""):
            names.add(str(serverapp.ip).lower().strip("[]"))
    own_port = app_settings.get(OWN_PORT_SETTING)
    if own_port:
        ports.add(int(own_port))
    return OwnServer(frozenset(ports), frozenset(names),
                     node=bool(app_settings.get("lemonade_node_mode")))


def host_rules(router_settings: Any, own: OwnServer) -> HostRules:
    """The admin's host lists with this server's own endpoint."""
    return HostRules(allowed=router_settings.remote_allowed_hosts,
                     denied=router_settings.remote_denied_hosts,
                     own_ports=own.ports, own_names=own.names, node=own.node)


async def check_replica_hosts(replicas: tuple[ReplicaSpec, ...], rules: HostRules,
                              param: str = "base_url") -> None:
    """Raise InvalidRequestError (400) when a replica points where the rules refuse; on a node
    router, LockedDownError (403, rule ``remote_base_url``)."""
    verdicts = await asyncio.gather(*(refusal(r.base_url, rules) for r in replicas))
    for why in verdicts:
        if why is not None and rules.node:
            raise LockedDownError("remote_base_url", f"Parameter '{param}' is refused: {why}",
                                  param=param)
        if why is not None:
            raise InvalidRequestError(f"Parameter '{param}' is refused: {why}", param=param)


async def refusal(base_url: str, rules: HostRules) -> str | None:
    """Why a (rebuilt) ``base_url`` may not be an upstream, in words; None when it may."""
    host, port = url_endpoint(base_url)
    return _judged(rules, host, port, await resolve(host))


def _judged(rules: HostRules, host: str, port: int, addresses: list[IPAddress]) -> str | None:
    """``rules``' refusal of ``host:port`` resolving to ``addresses`` (which of them are this
    machine's asked of the system), None when it may be an upstream."""
    local = [a for a in addresses if is_local_address(a)]
    return rules.refusal(host, port, addresses, local)


def _addresses(found: list[str]) -> list[IPAddress]:
    """The IP addresses among a resolver's answers (a scope suffix dropped), at most
    :data:`MAX_ADDRESSES` of them looked at."""
    addresses: list[IPAddress] = []
    for text in found[:MAX_ADDRESSES]:
        with contextlib.suppress(ValueError):
            addresses.append(ipaddress.ip_address(text.split("%")[0]))
    return addresses


async def resolve(host: str) -> list[IPAddress]:
    """The addresses ``host`` resolves to now (an IP address is itself); [] when it does not
    resolve within :data:`RESOLVE_TIMEOUT_S`."""
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, UnicodeError, asyncio.TimeoutError):
        return []
    return _addresses([str(info[4][0]) for info in infos])


def is_local_address(address: IPAddress) -> bool:
    """True when ``address`` is one of this machine's (the system lets a socket bind to it)."""
    address = canonical_address(address)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((str(address), 0))
    except OSError:
        return False
    return True


class HostRefusedAtConnect(OSError):
    """A remote host resolved, when connecting, to where the host rules refuse."""


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver, with the host rules applied to the addresses a name resolves to
    right before a connection is opened (``rules`` is called each time: this server's own
    port and the admin's lists as they are now). IP literals never reach a resolver; they
    were checked at registration and cannot change."""

    def __init__(self, rules: Callable[[], HostRules],
                 inner: AbstractResolver | None = None) -> None:
        self._rules = rules
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = (await self._inner.resolve(host, port, family))[:MAX_ADDRESSES]
        why = _judged(self._rules(), host, port, _addresses([str(r["host"]) for r in found]))
        if why is not None:
            raise HostRefusedAtConnect(f"refused when connecting: {why}")
        return found

    async def close(self) -> None:
        await self._inner.close()
