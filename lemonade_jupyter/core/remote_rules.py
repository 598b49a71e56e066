"""The admin's rules for remote models: which hosts a registration may point at, and which
environment variables of the server it may lend as an API key.

A remote model's ``base_url`` is a request the server makes on a caller's behalf, whose answer
the caller reads; its ``api_key_env`` is a secret of the server's environment that goes with it.
So both are allowlists decided by whoever configures the server, never by the caller:

* **Hosts.** By default any host may be an upstream except this Jupyter server itself: one of
  its own ports on one of its own addresses (loopback, ``0.0.0.0``/``::``, an address of this
  machine, its hostname, ``localhost``). ``remote_allowed_hosts``, when not empty, is the
  complete list of hosts allowed, and an entry there also lifts the refusal of an own address;
  ``remote_denied_hosts`` refuses a host whatever else says. Entries are host names, IP
  addresses or networks (``10.0.0.0/8``).
* **Key variables.** ``remote_key_envs`` lists the variable names an admin lends; an entry
  ending with ``*`` is a prefix (the default lends every ``LEMONADE_REMOTE_KEY_*``). The
  server's own credentials (Jupyter's and the Hub's tokens, ``HF_TOKEN``...) are never lent,
  even when listed.

Everything here is pure: the server layer resolves host names and says which addresses are this
machine's, then asks :meth:`HostRules.refusal`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Variables whose name starts with this are lent to remote models by default.
KEY_ENV_PREFIX = "LEMONADE_REMOTE_KEY_"
#: The default of ``remote_key_envs``.
DEFAULT_KEY_ENVS: tuple[str, ...] = (KEY_ENV_PREFIX + "*",)

#: The server's own credentials, never lent whatever ``remote_key_envs`` says: Jupyter's and
#: JupyterHub's tokens, the Hugging Face token, the key of our own backends, the kernel's way in.
OWN_CREDENTIALS = frozenset({
    "JUPYTER_TOKEN", "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN", "LLAMA_API_KEY", "LEMONADE_JUPYTER_TOKEN",
})
#: Prefixes of the variables Jupyter, JupyterHub and Hugging Face set or read.
OWN_CREDENTIAL_PREFIXES = ("JUPYTER", "JPY_", "HF_", "HUGGING_FACE_", "LEMONADE_JUPYTER_")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_KEY_ENV_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\*?")
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(\.(?!-)[A-Za-z0-9_-]{1,63})*\.?")


def is_env_name(name: object) -> bool:
    """True for a well-formed environment variable name (the whole string, no newline)."""
    return isinstance(name, str) and _ENV_NAME.fullmatch(name) is not None


def is_own_credential(name: str) -> bool:
    """True for a variable that holds one of the server's own credentials."""
    upper = name.upper()
    return upper in OWN_CREDENTIALS or upper.startswith(OWN_CREDENTIAL_PREFIXES)


def is_key_env_entry(entry: object) -> bool:
    """True for a valid ``remote_key_envs`` entry: a variable name, or a prefix ending in ``*``."""
    return isinstance(entry, str) and _KEY_ENV_ENTRY.fullmatch(entry) is not None


def key_env_allowed(name: str, allowed: Iterable[str]) -> bool:
    """True when ``name`` may be lent to a remote model: listed (or under a listed prefix) and
    not one of the server's own credentials."""
    if not is_env_name(name) or is_own_credential(name):
        return False
    for entry in allowed:
        if entry.endswith("*"):
            prefix = entry[:-1]
            if name.startswith(prefix) and len(name) > len(prefix):
                return True
        elif name == entry:
            return True
    return False


def is_host_entry(entry: object) -> bool:
    """True for a valid host list entry: a host name, an IP address or a network."""
    if not isinstance(entry, str) or not entry or len(entry) > 255:
        return False
    return _network(entry) is not None or _HOST_NAME.fullmatch(entry) is not None


def _network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address, or None when it is a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def canonical_address(address: IPAddress) -> IPAddress:
    """``::ffff:127.0.0.1`` is ``127.0.0.1``: one form for every comparison."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class _Entries:
    """One host list, parsed: names (lower case, no final dot) and networks."""

    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _Entries:
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            network = _network(entry)
            if network is not None:
                networks.append(network)
            else:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def has_name(self, host: str) -> bool:
        return host in self.names

    def has_address(self, address: IPAddress) -> bool:
        return any(address in n for n in self.networks)


@dataclass(frozen=True)
class HostRules:
    """Where a remote model may point: the admin's lists and this server's own endpoints."""

    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()
    #: The ports this server listens on (Jupyter's, or the embedded router's).
    own_ports: frozenset[int] = frozenset()
    #: Names of this machine (lower case): ``localhost``, its hostname, the address Jupyter
    #: was told to listen on.
    own_names: frozenset[str] = frozenset({"localhost"})
    #: A node router (one for every user of a JupyterHub): every port of this machine is
    #: refused, not only its own, since the node's loopback services (the Hub's API, its
    #: proxy's API, users' servers) are all there.
    node: bool = False

    def refusal(self, host: str, port: int, addresses: Collection[IPAddress],
                local: Collection[IPAddress] = ()) -> str | None:
        """Why ``host:port`` may not be an upstream, in words; None when it may.

        ``host`` is the URL's host in its canonical form (lower case; an IP address without
        brackets), ``addresses`` what it resolves to (empty when it does not resolve now) and
        ``local`` those of them that belong to this machine."""
        host = host.lower().rstrip(".")
        found = {canonical_address(a) for a in addresses}
        literal = ip_literal(host)
        if literal is not None:
            found.add(canonical_address(literal))
        denied, allowed = _Entries.parse(self.denied), _Entries.parse(self.allowed)
        if denied.has_name(host) or any(denied.has_address(a) for a in found):
            return f"host '{host}' is refused by the server's remote_denied_hosts"
        if allowed:
            if allowed.has_name(host) or (found and all(allowed.has_address(a) for a in found)):
                return None
            return f"host '{host}' is not in the server's remote_allowed_hosts"
        if self.node and self._is_own(host, found, local):
            return (f"'{host}:{port}' is on this node; a node router never points a remote "
                    "model at the node's own services (an admin may allow a host with "
                    "remote_allowed_hosts)")
        if port in self.own_ports and self._is_own(host, found, local):
            return (f"'{host}:{port}' is this Jupyter server itself; a remote model must be "
                    "another server (an admin may allow it with remote_allowed_hosts)")
        return None

    def _is_own(self, host: str, found: set[IPAddress], local: Collection[IPAddress]) -> bool:
        if host in self.own_names:
            return True
        mine = {canonical_address(a) for a in local}
        return any(a.is_loopback or a.is_unspecified or a in mine for a in found)
