"""Local or remote: where a request for a model name goes, decided in one place.

A name is a remote model's when the remote registry holds it (remote names never shadow a
catalog model: a pull refuses them), else it stands for a local model, an alias resolved to
its catalog name. Everything that treats the two kinds differently (the proxy, ``/load``, pins
and unloads) asks :func:`choose_target` and dispatches on the type it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from ..errors import InvalidRequestError
from .remote import RemoteRegistry
from .remote_replicas import RemoteModel


@dataclass(frozen=True)
class LocalTarget:
    """A model the router runs itself (``Router.call``)."""

    #: The catalog name (an alias resolved).
    name: str


#: Where a request goes: a local model, or a remote model (``RemoteRegistry.call``).
Target = Union[LocalTarget, RemoteModel]


def choose_target(name: str, remote: RemoteRegistry, resolve: Callable[[str], str]) -> Target:
    """The target ``name`` stands for; ``resolve`` maps an alias to its model."""
    model = remote.get(name)
    return model if model is not None else LocalTarget(resolve(name))


def refuse_remote(target: Target, name: str, what: str) -> None:
    """Remote models run on their upstream: there is nothing here to pin or unload (400)."""
    if not isinstance(target, LocalTarget):
        raise InvalidRequestError(
            f"'{name}' is a remote model: it runs on its upstream and is not loaded here "
            f"(it takes no slot and is never evicted), so it cannot be {what}",
            param="model")
