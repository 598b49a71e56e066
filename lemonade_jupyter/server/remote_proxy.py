"""The proxy's path to remote models: replica choice, failover, and errors in our shape.

:class:`RemoteForwarding` is a mixin of ``proxy.OpenAIProxyHandler``: a request whose model is
remote takes this path instead of a lease (no slot, no auto-load). The JSON body's ``model``
becomes the upstream's name on the way out; the answer's ``model`` becomes the name the client
asked for on the way back (the proxy's renamer, streaming included).

* Each attempt goes to the replica :meth:`RemoteRegistry.choose` gives (fewest in flight among
  those that answer), counted in flight while it runs.
* A replica that refuses the connection or times out is reported down (the registry probes it
  again with back-off). The retry rule: a request goes to one other replica at most, never
  back to one that may have received it; after a connection failure (nothing was sent) any
  request may go on, after the replica may have received it only a request that is safe to
  repeat (:data:`SAFE_TO_REPEAT`: no POST, so none of the proxied routes). A stream is retried
  only while nothing was sent to the client; once its answer has started, a failure ends it
  with an SSE error event, as for local backends.
* Every request carries the hop header (``core/remote_hops.py``): the routers it came
  through, then this one, so a remote model that leads back here is refused after one hop.
* One total deadline per request (``remote_total_timeout_s``), failover included: 504, or an
  SSE error event once a stream has started. An answer that is not streamed is read up to
  ``remote_max_answer_mib``; a redirect is followed only within its origin
  (``remote_upstream.py``).
* When no replica could answer: 502 ``upstream_unreachable`` naming each replica and what
  happened, or 504 ``upstream_timeout`` when the last one timed out. An upstream's own 4xx/5xx
  passes through with its status and message, in our envelope.
* The key goes in the ``Authorization`` header to its own replica only, read from the server's
  environment at each request; an upstream error message that echoes it is redacted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.remote import RemoteModel, RemoteRegistry, Replica
from ..core.remote_hops import HOP_HEADER
from ..errors import (
    InvalidRequestError, RemoteTimeoutError, RemoteUnreachableError, UpstreamError,
)
from .answers import ClientGone, Renamer, upstream_error
from .openai_checks import check_request
from .remote_upstream import RemoteStream, RemoteUpstream, ReplicaFailure, ReplicaTimeout

if TYPE_CHECKING:
    from .proxy import OpenAIProxyHandler

T = TypeVar("T")
#: Attempts per request: the first replica, then one other.
ATTEMPTS = 2
#: Methods whose request may go to another replica after one may have received it. The proxy
#: forwards only POSTs (a generation, with its cost), so none is repeated once sent.
SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "OPTIONS"})
REDACTED = b"[redacted]"


def redact(payload: bytes, model: RemoteModel) -> bytes:
    """``payload`` without any key of ``model``'s replicas (for upstream error messages)."""
    for replica in model.replicas:
        key = replica.spec.api_key()
        if key:
            payload = payload.replace(key.encode(), REDACTED)
    return payload


class _Attempts:
    """The replicas one request tried, and how each failed (for the final error)."""

    def __init__(self, registry: RemoteRegistry, model: RemoteModel, method: str,
                 total_s: float) -> None:
        self.registry = registry
        self.model = model
        #: The loop time by which the whole request, every attempt and answer included, ends.
        self.deadline = asyncio.get_running_loop().time() + total_s
        self.repeatable = method in SAFE_TO_REPEAT
        self.tried: list[Replica] = []
        self.failures: list[ReplicaFailure] = []

    def next(self) -> Replica | None:
        """The replica of the next attempt (never one tried before), or None when the retry
        rule allows no more: two attempts, and none after a failure where the replica may
        have received a request that is not safe to repeat."""
        if len(self.tried) >= ATTEMPTS:
            return None
        if self.failures and self.failures[-1].sent and not self.repeatable:
            return None
        replica = self.registry.choose(self.model.name, self.tried)
        if replica is not None:
            self.tried.append(replica)
            if replica.spec.api_key_env and not replica.spec.api_key():
                raise RemoteUnreachableError(
                    f"Environment variable '{replica.spec.api_key_env}' (the key of "
                    f"{replica.url}) is not set on the Jupyter server", param="model")
        return replica

    def fail(self, replica: Replica, exc: ReplicaFailure) -> None:
        self.failures.append(exc)
        if exc.marks_down:
            self.registry.failed(replica, str(exc))
        self.registry.finished(replica, self.model.name,
                               "timeout" if isinstance(exc, ReplicaTimeout) else "unreachable")

    def error(self) -> UpstreamError:
        details = "; ".join(str(f) for f in self.failures) or "no replica is registered"
        if self.failures and isinstance(self.failures[-1], ReplicaTimeout):
            return RemoteTimeoutError(
                f"Remote model '{self.model.name}' did not answer in time: {details}",
                param="model")
        return RemoteUnreachableError(
            f"No replica of remote model '{self.model.name}' could be reached "
            f"({len(self.model.replicas)} registered): {details}", param="model")


class RemoteForwarding:
    """Mixin of ``OpenAIProxyHandler``: serve one request from a remote model's replicas."""

    @property
    def remote_upstream(self: OpenAIProxyHandler) -> RemoteUpstream:
        return self.settings["lemonade_remote_upstream"]  # type: ignore[no-any-return]

    def _remote_request(self: OpenAIProxyHandler, model: RemoteModel, body: dict[str, Any],
                        replica: Replica, deadline: float
                        ) -> tuple[str, bytes, dict[str, str], dict[str, Any]]:
        """URL, body, headers and transport options of one attempt on ``replica``."""
        path = self.upstream_path.removeprefix("/v1")  # base_url is the upstream's /v1 root
        payload = json.dumps({**body, "model": model.spec.upstream_model}).encode()
        registry = self.router.remote
        headers = {**replica.spec.auth_headers(), "Content-Type": "application/json",
                   **registry.hops.outgoing(self.request.headers.get(HOP_HEADER))}
        settings = self.router.settings
        options = {"tls": registry.tls, "connect_s": settings.remote_connect_timeout_s,
                   "read_s": settings.remote_timeout_s, "deadline": deadline}
        return replica.url + path, payload, headers, options

    async def forward_remote(self: OpenAIProxyHandler, name: str, body: dict[str, Any],
                             stream: bool) -> None:
        """Serve ``body`` from remote model ``name``; raises our errors before any byte."""
        registry = self.router.remote
        model = registry.require(name)
        if not self.upstream_path.startswith("/v1/"):
            raise InvalidRequestError(
                f"'{name}' is a remote model: only the OpenAI-style routes (/v1/...) are "
                f"forwarded to its engine, not llama.cpp's own {self.upstream_path}",
                param="model")
        check_request(self.upstream_path, model.spec, body)  # type: ignore[arg-type]
        attempts = _Attempts(registry, model, self.request.method or "POST",
                             self.router.settings.remote_total_timeout_s)
        if stream:
            self._pump = asyncio.ensure_future(self._remote_stream(attempts, body))
            try:
                await self._pump
            except asyncio.CancelledError:
                if self._pump.cancelled():  # the client went away
                    return
                raise
            return
        while (replica := attempts.next()) is not None:
            url, payload, headers, options = self._remote_request(
                model, body, replica, attempts.deadline)
            max_bytes = int(self.router.settings.remote_max_answer_mib * (1 << 20))
            registry.started(replica)
            try:
                resp = await self.remote_upstream.post(url, payload, headers, **options,
                                                       max_bytes=max_bytes)
            except ReplicaFailure as exc:
                attempts.fail(replica, exc)
                continue
            except UpstreamError:  # an answer we refuse (too large, a redirect elsewhere)
                registry.finished(replica, name, "refused")
                raise
            except BaseException:
                registry.finished(replica, name, "cancelled")
                raise
            registry.finished(replica, name, "ok")
            if resp.code >= 400:
                status, err = upstream_error(resp.code, redact(resp.body, model))
                self.write_json(err, status)
            else:
                self.set_status(resp.code)
                self.finish(Renamer(name)(resp.body))
            return
        raise attempts.error()

    async def _remote_stream(self: OpenAIProxyHandler, attempts: _Attempts,
                             body: dict[str, Any]) -> None:

        model, registry = attempts.model, attempts.registry
        try:
            while True:
                replica = attempts.next()
                if replica is None:
                    raise attempts.error()
                url, payload, headers, options = self._remote_request(
                    model, body, replica, attempts.deadline)
                registry.started(replica)
                try:
                    resp = await self._with_pings(
                        self.remote_upstream.stream(url, payload, headers, **options))
                except ReplicaFailure as exc:
                    attempts.fail(replica, exc)  # nothing reached the client: next replica
                    continue
                except UpstreamError:  # an answer we refuse (a redirect elsewhere)
                    registry.finished(replica, model.name, "refused")
                    raise
                except BaseException:
                    registry.finished(replica, model.name, "cancelled")
                    raise
                await self._relay_remote(resp, replica, attempts)
                return
        except ClientGone:
            return
        except UpstreamError as exc:
            await self._fail(exc)

    async def _relay_remote(self: OpenAIProxyHandler, resp: RemoteStream, replica: Replica,
                            attempts: _Attempts) -> None:
        model, registry = attempts.model, attempts.registry
        outcome = "ok"
        try:
            await self._send_stream(resp, model.name, lambda body: redact(body, model))
        except ReplicaFailure as exc:
            # The answer had started: not retried (the client has part of it).
            outcome = "broken"
            if exc.marks_down:
                registry.failed(replica, str(exc))
            error = RemoteTimeoutError if isinstance(exc, ReplicaTimeout) else UpstreamError
            raise error(
                f"Remote model '{model.name}' failed mid-answer: {exc}", param="model") from exc
        except BaseException:
            outcome = "cancelled"
            raise
        finally:
            await resp.aclose()
            registry.finished(replica, model.name, outcome)

    async def _with_pings(self: OpenAIProxyHandler, work: Awaitable[T]) -> T:
        """Await ``work``, sending ``: ping`` comments while it takes long."""
        task = asyncio.ensure_future(work)
        try:
            return await self._pinging(task)
        finally:
            if not task.done():
                task.cancel()
