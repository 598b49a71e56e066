"""What a remote model is: an OpenAI-compatible upstream (vLLM, KServe, TGI, Ray Serve, another
lemonade) with one or more replicas, registered by ``/pull`` with ``recipe: "remote"``.

A remote model never runs here: it takes no slot, is never evicted and is kept out of the model
table altogether. This module only says what a registration holds and checks a ``/pull`` body
completely before anything is registered (a rejected body changes nothing).

The API key is never part of a spec: a replica names the *environment variable* of the Jupyter
server that holds it (``api_key_env``), and the key is read from the environment each time a
request or a probe goes to that replica. So the key is never persisted, shown, logged or sent
anywhere but its own upstream. ``api_key_env`` is one name for every replica, or a list with one
entry (a name or null) per ``base_urls`` entry, for replicas that each have their own key.

What a caller may name is the admin's choice (``core/remote_rules.py``): only the variables
``remote_key_envs`` lends, never the server's own credentials. ``base_url`` is taken apart and
rebuilt from its scheme, host, port and path, and the router only ever uses the rebuilt URL, so
nothing the caller hides in it (an empty ``?``, a ``#``, credentials, odd encodings of an
address) reaches the request. Every name check matches the whole string: a trailing newline is
no name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidRequestError
from .catalog import model_type
from .remote_rules import (
    DEFAULT_KEY_ENVS, ip_literal, is_env_name, is_own_credential, key_env_allowed,
)

RECIPE = "remote"
#: Keys a remote ``/pull`` body may carry.
PULL_KEYS = frozenset({"model_name", "recipe", "base_url", "base_urls", "upstream_model",
                       "api_key_env", "labels", "stream"})
MAX_REPLICAS = 16
# Every pattern is used with fullmatch: ``$`` would also match before a final newline.
_USER_NAME = re.compile(r"user\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: What an upstream may call its model (``org/name``, ``name:tag``...), appended to
#: ``user.NAME/`` when the whole model list of an upstream is registered.
_UPSTREAM_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,255}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A DNS name of letters, digits, ``-`` and ``_`` whose last label starts with a letter:
#: ``127.1``, ``2130706433`` or ``0x7f.1`` are addresses in disguise, not names.
_HOST_NAME = re.compile(r"((?!-)[a-z0-9_-]{1,63}\.)*(?!-)[a-z_][a-z0-9_-]{0,62}")
#: A URL path: segments of unreserved and sub-delimiter characters (no ``%``, no ``\\``).
_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@-]*)*")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica: its OpenAI ``/v1`` root and the environment variable holding its key."""

    base_url: str
    api_key_env: str | None = None

    def api_key(self) -> str | None:
        """The key, read from the environment now (None: no key, or the variable is unset).

        The server's own credentials are never read, whatever a state file says."""
        if not self.api_key_env or is_own_credential(self.api_key_env):
            return None
        return os.environ.get(self.api_key_env) or None

    def auth_headers(self) -> dict[str, str]:
        key = self.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def to_json(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api_key_env": self.api_key_env}


@dataclass(frozen=True)
class RemoteSpec:
    """One remote model: our name, the upstream's name for it, its replicas and labels."""

    name: str
    upstream_model: str
    replicas: tuple[ReplicaSpec, ...]
    labels: tuple[str, ...] = ("llm",)
    #: The ``user.NAME`` a whole model list was registered under ("" for a single model).
    group: str = ""

    recipe = RECIPE

    @property
    def type(self) -> str:
        return model_type(self.labels)

    def to_json(self) -> dict[str, Any]:
        """The persisted entry (``remote_models.json``): environment variable names, no key."""
        data: dict[str, Any] = {
            "model_name": self.name, "recipe": RECIPE, "upstream_model": self.upstream_model,
            "replicas": [r.to_json() for r in self.replicas], "labels": list(self.labels),
        }
        if self.group:
            data["group"] = self.group
        return data

    @classmethod
    def from_json(cls, data: Any) -> RemoteSpec | None:
        """A persisted entry, or None when it is junk (skipped, never stops the start)."""
        try:
            name, upstream = data["model_name"], data["upstream_model"]
            replicas = tuple(ReplicaSpec(check_base_url(r["base_url"]), r.get("api_key_env"))
                             for r in data["replicas"])
            labels = tuple(data.get("labels") or ["llm"])
            group = data.get("group") or ""
            ok = (isinstance(group, str)
                  and (_USER_NAME.fullmatch(group) is not None and name == f"{group}/{upstream}"
                       if group else isinstance(name, str) and _USER_NAME.fullmatch(name))
                  and is_upstream_model(upstream)
                  and 0 < len(replicas) <= MAX_REPLICAS
                  and all(r.api_key_env is None or is_env_name(r.api_key_env)
                          for r in replicas)
                  and all(isinstance(x, str) and _LABEL.fullmatch(x) for x in labels))
        except (KeyError, TypeError, AttributeError, InvalidRequestError):
            return None
        return cls(name, upstream, replicas, labels, group) if ok else None


@dataclass(frozen=True)
class RemotePull:
    """A checked remote ``/pull``: one model (``upstream_model`` given) or a whole list."""

    name: str
    upstream_model: str | None
    replicas: tuple[ReplicaSpec, ...]
    labels: tuple[str, ...]

    def spec(self, upstream_model: str, *, listed: bool = False) -> RemoteSpec:
        """The spec of one model; ``listed``: one of a whole list, named ``NAME/UPSTREAM``."""
        if not listed:
            return RemoteSpec(self.name, upstream_model, self.replicas, self.labels)
        return RemoteSpec(f"{self.name}/{upstream_model}", upstream_model, self.replicas,
                          self.labels, group=self.name)


def is_upstream_model(name: Any) -> bool:
    """True for a name an upstream may give its model (and ours may end with)."""
    return isinstance(name, str) and _UPSTREAM_MODEL.fullmatch(name) is not None


def check_base_url(url: Any, param: str = "base_url") -> str:
    """The URL rebuilt from its parts, ``scheme://host[:port][/path]`` without a trailing
    slash; InvalidRequestError (400) for anything else.

    Only http and https; no credentials; no query or fragment, not even an empty ``?`` or
    ``#`` (the router appends ``/chat/completions`` and the like, which must stay the path); a
    host that is a DNS name or a plain IP address; a path of plain characters without ``.`` or
    ``..`` segments. The caller's string itself is never used."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise InvalidRequestError(f"Parameter '{param}' must be a URL string", param=param)
    if not url.isascii() or not url.isprintable() or " " in url:
        raise InvalidRequestError(
            f"Parameter '{param}' must be a plain URL (printable ASCII, no spaces)", param=param)
    if "?" in url or "#" in url:
        raise InvalidRequestError(
            f"Parameter '{param}' must not have a query or fragment (no '?' or '#' at all): "
            "the router appends the OpenAI route to the URL's path", param=param)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        raise InvalidRequestError(f"Parameter '{param}' is not a valid URL", param=param) from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise InvalidRequestError(
            f"Parameter '{param}' must be an http:// or https:// URL with a host (the "
            "upstream's OpenAI /v1 root, e.g. https://vllm.example.org/v1)", param=param)
    if "@" in parts.netloc:
        raise InvalidRequestError(
            f"Parameter '{param}' must not carry credentials; put the key in an environment "
            "variable of the Jupyter server and name it in 'api_key_env'", param=param)
    host = _canonical_host(parts.hostname)
    if host is None or port == 0:
        raise InvalidRequestError(
            f"Parameter '{param}' must name its host as a DNS name or an IP address (e.g. "
            "vllm.example.org, 10.0.0.2, [fd00::2]) with a port from 1 to 65535", param=param)
    path = parts.path.rstrip("/")
    segments = path.split("/")
    if _PATH.fullmatch(path) is None or "." in segments or ".." in segments:
        raise InvalidRequestError(
            f"Parameter '{param}' must have a plain path (letters, digits, - . _ ~ and the like; "
            "no %-escapes, no '.' or '..' segments)", param=param)
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{path}"


def _canonical_host(host: str) -> str | None:
    """The host as the URL will name it (an IPv6 address in brackets), or None when it is no
    DNS name and no plain IP address (a zone index, ``127.1``, ``0x7f.1``...)."""
    if "%" in host:
        return None
    address = ip_literal(host)
    if address is not None:
        return f"[{address.compressed}]" if address.version == 6 else str(address)
    return host if _HOST_NAME.fullmatch(host) else None


def url_endpoint(base_url: str) -> tuple[str, int]:
    """The host (an IP address without brackets) and port a rebuilt ``base_url`` reaches."""
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]


def parse_remote_pull(body: dict[str, Any],
                      key_envs: Iterable[str] = DEFAULT_KEY_ENVS) -> RemotePull:
    """Check a remote ``/pull`` body completely; raise InvalidRequestError (400) otherwise.

    ``key_envs``: the variables the admin lends (``remote_key_envs``). Every named environment
    variable must be one of them and be set (and not empty) on the Jupyter server now. The
    hosts are checked by the server layer, which can resolve them (``server/remote_rest.py``)."""
    unknown = set(body) - PULL_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidRequestError(f"Unknown parameter '{key}' for recipe 'remote'", param=key)
    name = body.get("model_name")
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise InvalidRequestError(
            "Parameter 'model_name' must look like 'user.NAME' (letters, digits, . _ -)",
            param="model_name")
    if body.get("stream", False) is not False:
        raise InvalidRequestError("A remote pull downloads nothing: 'stream' must be false",
                                  param="stream")
    urls = _base_urls(body)
    keys = _key_envs(body.get("api_key_env"), len(urls), tuple(key_envs))
    upstream = body.get("upstream_model")
    if upstream is not None and not is_upstream_model(upstream):
        raise InvalidRequestError(
            "Parameter 'upstream_model' must be the upstream's model name (letters, digits, "
            ". _ - : @ + /)", param="upstream_model")
    labels = body.get("labels")
    if labels is None:
        labels = ["llm"]
    if (not isinstance(labels, list) or len(labels) > 16
            or not all(isinstance(x, str) and _LABEL.fullmatch(x) for x in labels)):
        raise InvalidRequestError("Parameter 'labels' must be a list of short strings",
                                  param="labels")
    replicas = tuple(ReplicaSpec(u, k) for u, k in zip(urls, keys))
    return RemotePull(name, upstream, replicas, tuple(labels))


def _base_urls(body: dict[str, Any]) -> list[str]:
    if ("base_url" in body) == ("base_urls" in body):
        raise InvalidRequestError(
            "Give exactly one of 'base_url' (a URL) or 'base_urls' (a list of replicas)",
            param="base_url")
    if "base_url" in body:
        return [check_base_url(body["base_url"])]
    raw = body["base_urls"]
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_REPLICAS:
        raise InvalidRequestError(
            f"Parameter 'base_urls' must be a list of 1 to {MAX_REPLICAS} URLs",
            param="base_urls")
    urls = [check_base_url(u, "base_urls") for u in raw]
    if len(set(urls)) != len(urls):
        raise InvalidRequestError("Parameter 'base_urls' lists a URL twice", param="base_urls")
    return urls


def _key_envs(raw: Any, count: int, allowed: tuple[str, ...]) -> list[str | None]:
    """One environment variable name (or None) per replica, each one lent and set now.

    A name the admin does not lend gets one answer whether or not the variable exists, so the
    answer tells nothing about the server's environment."""
    if raw is None or isinstance(raw, str):
        names: list[Any] = [raw] * count
    elif isinstance(raw, list) and len(raw) == count:
        names = raw
    else:
        raise InvalidRequestError(
            "Parameter 'api_key_env' must be the name of an environment variable, or a list "
            "with one name (or null) per entry of 'base_urls'", param="api_key_env")
    for env in names:
        if env is None:
            continue
        if not is_env_name(env):
            raise InvalidRequestError(
                "Parameter 'api_key_env' must name an environment variable (letters, digits, "
                "_), not hold the key itself", param="api_key_env")
        if not key_env_allowed(env, allowed):
            raise InvalidRequestError(not_lent_message(allowed), param="api_key_env")
        if not os.environ.get(env):
            raise InvalidRequestError(
                f"Environment variable '{env}' is not set on the Jupyter server: set it "
                "(with the key) in the environment the server starts from", param="api_key_env")
    return names


def not_lent_message(allowed: Iterable[str]) -> str:
    """The one answer to an ``api_key_env`` the admin does not lend (set or not)."""
    lent = ", ".join(allowed) or "none"
    return ("Parameter 'api_key_env' must name a variable this server lends to remote models "
            f"(c.LemonadeApp.remote_key_envs: {lent}), never one of the server's own "
            "credentials")
