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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidRequestError
from .catalog import model_type

RECIPE = "remote"
#: Keys a remote ``/pull`` body may carry.
PULL_KEYS = frozenset({"model_name", "recipe", "base_url", "base_urls", "upstream_model",
                       "api_key_env", "labels", "stream"})
MAX_REPLICAS = 16
_USER_NAME = re.compile(r"^user\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: What an upstream may call its model (``org/name``, ``name:tag``...), appended to
#: ``user.NAME/`` when the whole model list of an upstream is registered.
_UPSTREAM_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,255}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica: its OpenAI ``/v1`` root and the environment variable holding its key."""

    base_url: str
    api_key_env: str | None = None

    def api_key(self) -> str | None:
        """The key, read from the environment now (None: no key, or the variable is unset)."""
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None

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
            ok = (isinstance(name, str) and name.startswith("user.")
                  and isinstance(upstream, str) and _UPSTREAM_MODEL.match(upstream)
                  and 0 < len(replicas) <= MAX_REPLICAS
                  and all(r.api_key_env is None or (isinstance(r.api_key_env, str)
                                                    and _ENV_NAME.match(r.api_key_env))
                          for r in replicas)
                  and all(isinstance(x, str) and _LABEL.match(x) for x in labels)
                  and isinstance(group, str))
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
    return isinstance(name, str) and _UPSTREAM_MODEL.match(name) is not None


def check_base_url(url: Any, param: str = "base_url") -> str:
    """An ``http(s)://host[:port][/path]`` URL without credentials, query or fragment, and
    without its trailing slash; InvalidRequestError otherwise."""
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise InvalidRequestError(f"Parameter '{param}' must be a URL string", param=param)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        raise InvalidRequestError(f"Parameter '{param}' is not a valid URL", param=param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(
            f"Parameter '{param}' must be an http:// or https:// URL with a host (the "
            "upstream's OpenAI /v1 root, e.g. https://vllm.example.org/v1)", param=param)
    if parts.username is not None or parts.password is not None:
        raise InvalidRequestError(
            f"Parameter '{param}' must not carry credentials; put the key in an environment "
            "variable of the Jupyter server and name it in 'api_key_env'", param=param)
    if parts.query or parts.fragment:
        raise InvalidRequestError(f"Parameter '{param}' must not have a query or fragment",
                                  param=param)
    del port
    return url.rstrip("/")


def parse_remote_pull(body: dict[str, Any]) -> RemotePull:
    """Check a remote ``/pull`` body completely; raise InvalidRequestError (400) otherwise.

    Every named environment variable must be set (and not empty) on the Jupyter server now."""
    unknown = set(body) - PULL_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise InvalidRequestError(f"Unknown parameter '{key}' for recipe 'remote'", param=key)
    name = body.get("model_name")
    if not isinstance(name, str) or not _USER_NAME.match(name):
        raise InvalidRequestError(
            "Parameter 'model_name' must look like 'user.NAME' (letters, digits, . _ -)",
            param="model_name")
    if body.get("stream", False) is not False:
        raise InvalidRequestError("A remote pull downloads nothing: 'stream' must be false",
                                  param="stream")
    urls = _base_urls(body)
    keys = _key_envs(body.get("api_key_env"), len(urls))
    upstream = body.get("upstream_model")
    if upstream is not None and (not isinstance(upstream, str)
                                 or not _UPSTREAM_MODEL.match(upstream)):
        raise InvalidRequestError(
            "Parameter 'upstream_model' must be the upstream's model name (letters, digits, "
            ". _ - : @ + /)", param="upstream_model")
    labels = body.get("labels")
    if labels is None:
        labels = ["llm"]
    if (not isinstance(labels, list) or len(labels) > 16
            or not all(isinstance(x, str) and _LABEL.match(x) for x in labels)):
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


def _key_envs(raw: Any, count: int) -> list[str | None]:
    """One environment variable name (or None) per replica, each one set now."""
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
        if not isinstance(env, str) or not _ENV_NAME.match(env):
            raise InvalidRequestError(
                "Parameter 'api_key_env' must name an environment variable (letters, digits, "
                "_), not hold the key itself", param="api_key_env")
        if not os.environ.get(env):
            raise InvalidRequestError(
                f"Environment variable '{env}' is not set on the Jupyter server: set it "
                "(with the key) in the environment the server starts from", param="api_key_env")
    return names
