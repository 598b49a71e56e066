"""The live objects of remote models: one :class:`Replica` per upstream server, and a
:class:`RemoteModel` (its registration and its replicas).

They live apart from the registry (``remote.py``) so that the failover protocol
(``remote_failover.py``), which the registry uses, can name them without importing the registry
back. Only :class:`~.remote.RemoteRegistry` writes a replica's fields; everyone else reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .remote_spec import RemoteSpec, ReplicaSpec


@dataclass(eq=False)
class Replica:
    """The live state of one upstream server. Written only by :class:`~.remote.RemoteRegistry`."""

    spec: ReplicaSpec
    #: None until the first probe or request says.
    up: bool | None = None
    in_flight: int = 0
    #: Requests sent to it so far: among equally busy replicas the least used goes first.
    sent: int = 0
    latency_ms: float | None = None
    last_error: str = ""
    #: Failures in a row (probes or requests); sets the back-off.
    failures: int = 0
    next_probe: float = 0.0
    changed_at: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return self.spec.base_url

    @property
    def state(self) -> str:
        return {True: "up", False: "down", None: "unknown"}[self.up]

    def to_json(self) -> dict[str, Any]:
        return {"base_url": self.url, "state": self.state, "in_flight": self.in_flight,
                "latency_ms": self.latency_ms, "last_error": self.last_error or None,
                "api_key_env": self.spec.api_key_env, "since": round(self.changed_at, 3)}


@dataclass(frozen=True)
class RemoteModel:
    """A remote model and its replicas (live objects: read them, never write them)."""

    spec: RemoteSpec
    replicas: tuple[Replica, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def status(self) -> str:
        """``ready`` (a replica answers), ``unreachable`` (none does), ``unknown`` (not probed)."""
        states = {r.up for r in self.replicas}
        if True in states:
            return "ready"
        return "unknown" if None in states else "unreachable"

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    def latency_ms(self) -> float | None:
        """The last probe latency of the fastest replica that answers."""
        figures = [r.latency_ms for r in self.replicas if r.up and r.latency_ms is not None]
        return min(figures) if figures else None
