"""The retry rule of remote models: which replica a request tries next, and what it ends with.

One request to a remote model is a :class:`Failover`: it asks for a replica
(``RemoteRegistry.choose``: fewest in flight among those that answer), and after a failure
decides whether another one may be tried:

* a request goes to one other replica at most (:data:`ATTEMPTS`), never back to one that may
  have received it;
* after a connection failure (nothing was sent) any request may go on; after a failure where
  the replica may have received the request (``ReplicaTransportError.sent``), only a request
  that is safe to repeat (:data:`SAFE_TO_REPEAT`: no POST, so none of the proxied routes);
* when no replica could answer: ``RemoteUnreachableError`` naming each replica and what
  happened, or ``RemoteTimeoutError`` when the last one timed out.

The same rule holds for plain and streamed answers (``RemoteRegistry.call`` applies it);
a failure after an answer has started is never retried (:func:`mid_answer_error`).
:class:`RemoteAttempt` is what one try hands to the transport, as a ``Lease`` is for a local
backend: the replica, its key, and the deadline of the whole request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import (
    RemoteTimeoutError, RemoteUnreachableError, ReplicaTimeoutError, ReplicaTransportError,
    UpstreamError,
)
from .remote_replicas import RemoteModel, Replica

#: Attempts per request: the first replica, then one other.
ATTEMPTS = 2
#: Methods whose request may go to another replica after one may have received it. The proxy
#: forwards only POSTs (a generation, with its cost), so none is repeated once sent.
SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class RemoteAttempt:
    """One try of a request on one replica: what the transport needs to send it."""

    model: RemoteModel
    replica: Replica
    #: The loop time (``loop.time()``) by which the whole request, every attempt and the
    #: whole answer included, ends (``remote_total_timeout_s``).
    deadline: float

    @property
    def base_url(self) -> str:
        return self.replica.url

    def headers(self) -> dict[str, str]:
        """The replica's own key, read from the environment now (none when it has none)."""
        return self.replica.spec.auth_headers()


class Failover:
    """The replicas one request tried and how each failed; see the module docstring."""

    def __init__(self, model: RemoteModel,
                 choose: Callable[[Sequence[Replica]], Replica | None], method: str) -> None:
        self.model = model
        self._choose = choose
        self.repeatable = method.upper() in SAFE_TO_REPEAT
        self.tried: list[Replica] = []
        self.failures: list[ReplicaTransportError] = []

    def next(self) -> Replica | None:
        """The replica of the next attempt (never one tried before), or None when the retry
        rule allows no more. Raises RemoteUnreachableError when the chosen replica's key
        variable is no longer set (nothing is sent then)."""
        if len(self.tried) >= ATTEMPTS:
            return None
        if self.failures and self.failures[-1].sent and not self.repeatable:
            return None
        replica = self._choose(self.tried)
        if replica is not None:
            self.tried.append(replica)
            if replica.spec.api_key_env and not replica.spec.api_key():
                raise RemoteUnreachableError(
                    f"Environment variable '{replica.spec.api_key_env}' (the key of "
                    f"{replica.url}) is not set on the Jupyter server", param="model")
        return replica

    def failed(self, exc: ReplicaTransportError) -> None:
        self.failures.append(exc)

    def error(self) -> UpstreamError:
        """What the client gets when no replica could answer."""
        details = "; ".join(str(f) for f in self.failures) or "no replica is registered"
        if self.failures and isinstance(self.failures[-1], ReplicaTimeoutError):
            return RemoteTimeoutError(
                f"Remote model '{self.model.name}' did not answer in time: {details}",
                param="model")
        return RemoteUnreachableError(
            f"No replica of remote model '{self.model.name}' could be reached "
            f"({len(self.model.replicas)} registered): {details}", param="model")


def outcome(exc: ReplicaTransportError) -> str:
    """How a failed attempt is counted in the metrics."""
    return "timeout" if isinstance(exc, ReplicaTimeoutError) else "unreachable"


def mid_answer_error(model: RemoteModel, exc: ReplicaTransportError) -> UpstreamError:
    """A failure after the answer had started (the client has part of it): not retried."""
    error = RemoteTimeoutError if isinstance(exc, ReplicaTimeoutError) else UpstreamError
    return error(f"Remote model '{model.name}' failed mid-answer: {exc}", param="model")
