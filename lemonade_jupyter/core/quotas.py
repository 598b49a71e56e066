"""Per-user quotas of a node router: pins, pinned memory, and requests in flight.

One router serves every user of a JupyterHub node, so without bounds one user could pin every
slot, hold all the memory with pins nobody else may evict, or queue a batch of hundreds of
requests in front of everyone else's. Three runtime settings bound one user
(``node_max_pins_per_user``, ``node_max_pinned_mib_per_user``,
``node_max_requests_per_user``; -1: no limit). The checks run before a request touches
anything (``server/node_access.py`` for pins, ``server/base.py`` for requests in flight), so a
refused request changes nothing:

* a pin over a quota: 409 ``quota_exceeded`` with ``quota``, ``limit``, ``used`` and
  ``requested`` (:class:`~lemonade_jupyter.errors.QuotaExceededError`);
* an inference request over the in-flight quota: 429 with ``Retry-After``
  (:class:`~lemonade_jupyter.errors.TooManyRequestsError`).

A user's pins are the pinned live models the owner registry (``core/owners.py``) gives to that
user. Admins are bound by the same quotas for their own pins: an admin is a user of the GPU
too, and an admin who needs more raises the setting, which is visible to everyone. An admin's
pin of *another* user's model is not charged to anyone: the owner stays who it was, and the
admin acted on purpose. Memory counts what a model holds as measured, else as the router
estimated it at its start, else the size of its files (before its first start nothing better
is known).

Owner: :class:`InFlight` (one per Jupyter server) is written only on the server's event loop,
by the handlers' ``prepare`` and ``on_finish``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Protocol

from ..errors import LemonadeError, QuotaExceededError, TooManyRequestsError
from .catalog import Catalog
from .live_model import LiveModel
from .owners import OwnerRegistry


class Router(Protocol):
    """What the quotas read of the router (it is not imported: core modules do not reach
    back into it)."""

    settings: Any
    catalog: Catalog

    def get_live(self, name: str) -> LiveModel | None: ...

    def live_models(self) -> list[LiveModel]: ...

MIB = 1024 * 1024

#: A quota's value for "no limit".
NO_LIMIT = -1


def model_bytes(router: Router, name: str) -> int:
    """What ``name`` holds or will hold: measured, else estimated, else its files' size."""
    live = router.get_live(name)
    if live is not None:
        if live.memory_bytes:
            return int(live.memory_bytes)
        if live.estimate_bytes:
            return int(live.estimate_bytes)
    try:
        spec = router.catalog.get(name)
    except LemonadeError:  # an unknown name: the handler answers 404, nothing to charge
        return 0
    total = 0
    for path in spec.files or ((spec.checkpoint,) if spec.checkpoint else ()):
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total


def pins_of(router: Router, owners: OwnerRegistry | None, user: str) -> list[LiveModel]:
    """The pinned live models that ``user`` owns."""
    if owners is None:
        return []
    return [m for m in router.live_models() if m.pinned and owners.get(m.name) == user]


def check_pin(router: Router, owners: OwnerRegistry | None, user: str, name: str) -> None:
    """Raise QuotaExceededError when pinning ``name`` would take ``user`` over a pin quota.

    A model already pinned adds nothing; a model another user owns is not charged to
    ``user`` (only an admin may pin it, see the module docstring)."""
    owner = owners.get(name) if owners is not None else None
    if owner not in (None, user):
        return
    live = router.get_live(name)
    if live is not None and live.pinned:
        return
    held = [m for m in pins_of(router, owners, user) if m.name != name]
    settings = router.settings
    max_pins = int(settings.node_max_pins_per_user)
    if max_pins != NO_LIMIT and len(held) + 1 > max_pins:
        raise QuotaExceededError(
            "pins_per_user",
            f"User '{user}' already holds {len(held)} pinned model(s) on this node, the most "
            f"one user may pin (node_max_pins_per_user = {max_pins}). Unpin a model first.",
            limit=max_pins, used=len(held), requested=1, param="pinned")
    max_mib = int(settings.node_max_pinned_mib_per_user)
    if max_mib != NO_LIMIT:
        used = _mib(model_bytes(router, m.name) for m in held)
        requested = _mib((model_bytes(router, name),))
        if used + requested > max_mib:
            raise QuotaExceededError(
                "pinned_mib_per_user",
                f"Pinning '{name}' ({requested} MiB) would take the memory of {user}'s pinned "
                f"models to {used + requested} MiB, over the {max_mib} MiB one user may pin "
                "(node_max_pinned_mib_per_user). Unpin a model first.",
                limit=max_mib, used=used, requested=requested, param="pinned")


def _mib(sizes: Iterable[int]) -> int:
    """MiB, rounded up, of the sizes together (a model of a few bytes still counts)."""
    total = sum(sizes)
    return -(-total // MIB)


class InFlight:
    """Requests in flight per user; :meth:`enter` refuses one beyond the user's quota.

    Bounded by the requests the server holds open: an entry leaves with its request."""

    def __init__(self) -> None:
        self._by_user: dict[str, int] = {}

    def enter(self, user: str, limit: int) -> None:
        """Count one more request of ``user``; raise TooManyRequestsError (nothing counted)
        when ``user`` already has ``limit`` in flight (-1: no limit)."""
        used = self._by_user.get(user, 0)
        if limit != NO_LIMIT and used >= limit:
            raise TooManyRequestsError(user, limit=limit, used=used)
        self._by_user[user] = used + 1

    def leave(self, user: str) -> None:
        """Count one request of ``user`` less (once per :meth:`enter`)."""
        left = self._by_user.get(user, 0) - 1
        if left > 0:
            self._by_user[user] = left
        else:
            self._by_user.pop(user, None)

    def snapshot(self) -> dict[str, int]:
        """A copy: user -> requests in flight."""
        return dict(self._by_user)
