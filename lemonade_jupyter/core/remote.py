"""Remote models: the registry, the state of their replicas, and the probe loop.

:class:`RemoteRegistry` is the one owner (on the router's loop) of

* the remote models by name (persisted in ``<data_dir>/remote_models.json``: URLs and the
  *names* of the environment variables holding keys, never a key);
* one :class:`Replica` per upstream server (``base_url`` + ``api_key_env``), shared by every
  model registered on it: whether it answers, its requests in flight, its last probe latency,
  and when to probe it next (``remote_replicas.py``);
* the probe task (``run``), which the router starts and cancels with its own life.

:meth:`RemoteRegistry.call` sends one request, the twin of ``Router.call``: the transport is
the caller's (``send``, the server's aiohttp client), the failover is here, one retry rule for
plain and streamed answers (``remote_failover.py``). Each attempt goes to the replica with the
fewest requests in flight among those that answer (:meth:`RemoteRegistry.choose`), counted in
flight while it runs (:meth:`RemoteRegistry.started`, ``finished``, ``failed``). A replica that
refused a connection or timed out is marked down and probed again with back-off (0.5 s doubling up to
``remote_probe_backoff_max_s``, computed so that no failure count can overflow it); one that
answers is probed every ``remote_probe_interval_s``. A probe is ``GET {base_url}/models`` with
the key and the hop header (``remote_hops.py``); its body is not read. Every change of a
replica's state is an event (``reachable`` / ``unreachable``), with the model's resulting
status. A round of the probe loop that fails is logged and the loop goes on.

What an upstream sends is bounded: a ``/models`` list is read up to :data:`MAX_LIST_BYTES`, and
one pull registers at most ``remote_max_models_per_upstream`` models from it. No cookie is ever
kept (an upstream's cookie would go to every other upstream on its host), and no redirect is
followed by a probe.

Remote models never enter the model table: they take no slot, are never evicted and cannot be
pinned.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.cookiejar
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ..errors import (
    InvalidRequestError, ModelNotFoundError, RemoteUnreachableError, ReplicaTransportError,
    UpstreamError,
)
from .events import EventLog
from .remote_failover import Failover, RemoteAttempt, mid_answer_error, outcome
from .remote_hops import HopGuard
from .remote_replicas import RemoteModel, Replica
from .remote_spec import RemotePull, RemoteSpec, ReplicaSpec, is_upstream_model
from .state_files import read_json_or_quarantine, write_json_atomic

__all__ = ["RemoteRegistry", "RemoteModel", "Replica", "RemoteAttempt", "backoff_s",
           "tls_context"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: First back-off of a replica found down; it doubles up to ``remote_probe_backoff_max_s``.
FIRST_BACKOFF_S = 0.5
#: Doublings of the back-off at most: far beyond any cap, far below a float's range.
_MAX_DOUBLINGS = 40
#: Bytes of an upstream's ``/models`` answer read at most (a list of a few hundred models with
#: their metadata is well under it); a longer one is refused unread.
MAX_LIST_BYTES = 4 << 20
#: Pause after a round of the probe loop that failed, so a recurring bug cannot spin the loop.
_PAUSE_AFTER_FAILED_ROUND_S = 1.0


def backoff_s(failures: int, cap_s: float) -> float:
    """Seconds until the next probe of a replica after ``failures`` failures in a row.

    ``FIRST_BACKOFF_S`` doubled per failure up to ``cap_s``; the exponent is bounded first, so
    a day-long outage (thousands of failures) gives the cap, never an OverflowError."""
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    return min(cap_s, FIRST_BACKOFF_S * 2.0 ** doublings)


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: a probe sends no cookie, whatever an upstream set."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Certificate verification on, against the system store or ``ca_bundle`` (a PEM file)."""
    return ssl.create_default_context(cafile=ca_bundle or None)


class RemoteRegistry:
    """Remote models and their replicas; see the module docstring for what it owns."""

    def __init__(self, data_dir: Path | None, events: EventLog,
                 settings: Callable[[], Any]) -> None:
        self._path = data_dir / "remote_models.json" if data_dir else None
        self._events = events
        self._settings = settings
        self._specs: dict[str, RemoteSpec] = {}
        self._replicas: dict[tuple[str, str | None], Replica] = {}
        self._wake = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        #: This router's id, sent with every request to an upstream (probes and forwarded).
        self.hops = HopGuard()
        #: PEM file of the CA certificates to trust (``c.LemonadeApp.remote_ca_bundle``).
        self.ca_bundle: str | None = None
        self._tls: ssl.SSLContext | None = None
        #: Requests by (model, replica URL, outcome), for the metrics.
        self.requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._load()

    # ------------------------------------------------------------------ lifetime
    @property
    def tls(self) -> ssl.SSLContext:
        """The TLS context of every connection to an upstream (probes and requests)."""
        if self._tls is None:
            self._tls = tls_context(self.ca_bundle)
        return self._tls

    async def run(self) -> None:
        """The probe loop (the router's background task): probe each replica when it is due.

        Runs until cancelled; closes its HTTP client then. A round that raises is logged and
        the loop goes on after a short pause: a bug in one round must not stop every remote
        model from ever changing state again."""
        self._http = self._client()
        try:
            while True:
                self._wake.clear()
                try:
                    timeout = await self._round()
                except Exception:  # noqa: BLE001 - the loop must outlive any one round
                    log.exception("A round of the remote probe loop failed; probing goes on")
                    timeout = _PAUSE_AFTER_FAILED_ROUND_S
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            client, self._http = self._http, None
            await client.aclose()

    async def _round(self) -> float | None:
        """Probe every replica that is due; return the seconds until the next one is."""
        now = time.monotonic()
        due = [r for r in self._replicas.values() if r.next_probe <= now]
        if due:
            results = await asyncio.gather(*(self._probe(r) for r in due),
                                           return_exceptions=True)
            for replica, result in zip(due, results):
                if isinstance(result, Exception):  # a bug in one probe must not end the round
                    log.error("Probe of %s failed", replica.url, exc_info=result)
                    self._set_up(replica, False, type(result).__name__)
        waits = [r.next_probe for r in self._replicas.values()]
        return max(0.0, min(waits) - time.monotonic()) if waits else None

    def _client(self) -> httpx.AsyncClient:
        """The probes' HTTP client: no redirects, no cookies, our hop header on every request."""
        # Identity encoding: the size cap of a list holds for what is read, no inflated body.
        return httpx.AsyncClient(verify=self.tls, follow_redirects=False, cookies=_NoCookies(),
                                 headers={**self.hops.outgoing(), "Accept-Encoding": "identity"})

    # ------------------------------------------------------------------ queries
    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def get(self, name: str) -> RemoteModel | None:
        spec = self._specs.get(name)
        return None if spec is None else self._model(spec)

    def require(self, name: str) -> RemoteModel:
        model = self.get(name)
        if model is None:
            raise ModelNotFoundError(f"Model '{name}' is not a remote model", param="model")
        return model

    def all(self) -> list[RemoteModel]:
        return [self._model(s) for s in sorted(self._specs.values(), key=lambda s: s.name)]

    def _model(self, spec: RemoteSpec) -> RemoteModel:
        return RemoteModel(spec, tuple(self._replica(r) for r in spec.replicas))

    def _replica(self, spec: ReplicaSpec) -> Replica:
        key = (spec.base_url, spec.api_key_env)
        replica = self._replicas.get(key)
        if replica is None:
            replica = self._replicas[key] = Replica(spec)
            self._wake.set()
        return replica

    # ------------------------------------------------------------------ registration
    async def register(self, pull: RemotePull, taken: Iterable[str] = ()) -> list[RemoteModel]:
        """Register one model, or every model the upstream lists (no ``upstream_model``).

        ``taken``: names of local models, which a remote one may not shadow. The replicas are
        probed before this returns, so the answer says whether they are reachable. Raises
        InvalidRequestError for a name taken or a list longer than
        ``remote_max_models_per_upstream``, RemoteUnreachableError when a list is asked for and
        no replica answers with one (nothing is registered then)."""
        if pull.name in set(taken):
            raise InvalidRequestError(
                f"'{pull.name}' is a local model; delete it first or choose another name",
                param="model_name")
        if pull.upstream_model is not None:
            specs = [pull.spec(pull.upstream_model)]
        else:
            listed = await self._list_models(pull.replicas)
            cap = self._settings().remote_max_models_per_upstream
            if len(listed) > cap:
                raise InvalidRequestError(
                    f"The upstream lists {len(listed)} models, more than "
                    f"remote_max_models_per_upstream ({cap}) lets one pull register: give "
                    f"'upstream_model' to register the ones you need one by one", param="base_url")
            specs = [pull.spec(m, listed=True) for m in listed]
        for old in [s for s in self._specs.values()
                    if s.name == pull.name or s.group == pull.name]:
            del self._specs[old.name]
        for spec in specs:
            self._specs[spec.name] = spec
        self._forget_unused_replicas()
        self._save()
        await asyncio.gather(*(self._probe(self._replica(r)) for r in pull.replicas))
        for spec in specs:
            self._events.emit("remote", spec.name, "registered",
                              replicas=[r.base_url for r in spec.replicas])
        return [self._model(s) for s in specs]

    def remove(self, name: str) -> list[str]:
        """Forget a remote model, or every model registered under a list's name; return them."""
        gone = [s.name for s in self._specs.values() if s.name == name or s.group == name]
        if not gone:
            raise ModelNotFoundError(f"Model '{name}' is not a remote model", param="model_name")
        for n in gone:
            del self._specs[n]
            self._events.emit("remote", n, "deleted")
        self._forget_unused_replicas()
        self._save()
        return sorted(gone)

    def groups(self) -> set[str]:
        return {s.group for s in self._specs.values() if s.group}

    async def _list_models(self, replicas: Iterable[ReplicaSpec]) -> list[str]:
        """The model ids of the first replica that lists them."""
        problems = []
        for spec in replicas:
            try:
                status, body = await self._get_models(spec, read=True)
                if status >= 400:
                    problems.append(f"{spec.base_url}: HTTP {status}")
                    continue
                ids = [m.get("id") for m in json.loads(body).get("data", [])]
            except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
                problems.append(f"{spec.base_url}: {_describe(exc)}")
                continue
            good = sorted({i for i in ids if is_upstream_model(i)})
            if good:
                return good
            problems.append(f"{spec.base_url}: lists no model")
        raise RemoteUnreachableError(
            "Could not list the upstream's models (give 'upstream_model' to register one "
            "without listing): " + "; ".join(problems))

    # ------------------------------------------------------------------ requests
    def choose(self, name: str, tried: Iterable[Replica] = ()) -> Replica | None:
        """The replica for the next request: fewest in flight among those that answer, then
        those not probed yet, then those found down (the probe may lag a recovery). None once
        every replica was ``tried``."""
        model = self.require(name)
        left = [r for r in model.replicas if r not in set(tried)]
        if not left:
            return None
        rank = {True: 0, None: 1, False: 2}
        return min(left, key=lambda r: (rank[r.up], r.in_flight, r.sent))

    async def call(self, name: str, send: Callable[[RemoteAttempt], Awaitable[T]], *,
                   replayable: Callable[[], bool] = lambda: True, method: str = "POST") -> T:
        """Send one request to remote model ``name``, failing over to one other replica by the
        retry rule (``remote_failover.py``). The twin of ``Router.call`` for local models.

        ``send(attempt)`` is the transport: it sends the request to ``attempt.replica`` by
        ``attempt.deadline`` and returns what it got (a plain answer, or nothing once it relayed
        a stream), raising :class:`~lemonade_jupyter.errors.ReplicaTransportError` when the
        replica gave no (whole) answer. Such a replica is marked down (unless only the total
        deadline ran out); while ``replayable()`` says the answer has not started, the request
        goes on to another replica if the rule allows, else it ends with
        ``RemoteUnreachableError`` or ``RemoteTimeoutError``; once the answer has started, with
        an error that says it failed mid-answer. Any other ``UpstreamError`` (an answer we
        refuse: too large, a redirect elsewhere) ends the request at once. Every attempt is
        counted in flight while it runs and in :attr:`requests` by its outcome.
        """
        model = self.require(name)
        deadline = (asyncio.get_running_loop().time()
                    + self._settings().remote_total_timeout_s)
        failover = Failover(model, lambda tried: self.choose(name, tried), method)
        while (replica := failover.next()) is not None:
            self.started(replica)
            result = "cancelled"
            try:
                answer = await send(RemoteAttempt(model, replica, deadline))
                result = "ok"
                return answer
            except ReplicaTransportError as exc:
                if exc.marks_down:
                    self.failed(replica, str(exc))
                if not replayable():
                    result = "broken"
                    raise mid_answer_error(model, exc) from exc
                result = outcome(exc)
                failover.failed(exc)
            except UpstreamError:
                result = "refused"
                raise
            finally:
                self.finished(replica, model.name, result)
        raise failover.error()

    def started(self, replica: Replica) -> None:
        replica.in_flight += 1
        replica.sent += 1

    def finished(self, replica: Replica, model: str, outcome: str) -> None:
        """A request ended: ``ok`` (an answer, whatever its status), or how it failed."""
        replica.in_flight = max(0, replica.in_flight - 1)
        self.requests[(model, replica.url, outcome)] += 1
        if outcome == "ok" and replica.up is not True:
            self._set_up(replica, True, "")

    def failed(self, replica: Replica, reason: str) -> None:
        """A request could not reach ``replica`` (refused, timed out): mark it down now."""
        self._set_up(replica, False, reason)

    async def probe_model(self, name: str) -> RemoteModel:
        """Probe every replica of ``name`` now (``/load`` of a remote model)."""
        model = self.require(name)
        await asyncio.gather(*(self._probe(r) for r in model.replicas))
        return model

    # ------------------------------------------------------------------ probing
    async def _probe(self, replica: Replica) -> None:
        start = time.monotonic()
        try:
            status, _ = await self._get_models(replica.spec, read=False)
        except httpx.HTTPError as exc:
            self._set_up(replica, False, _describe(exc))
            return
        replica.latency_ms = round((time.monotonic() - start) * 1000, 2)
        if status == 508:
            self._set_up(replica, False, "HTTP 508: this URL leads back to this router")
        elif status >= 500:
            self._set_up(replica, False, f"HTTP {status}")
        else:
            self._set_up(replica, True, "" if status < 400 else f"HTTP {status} to the probe")

    async def _get_models(self, spec: ReplicaSpec, *, read: bool) -> tuple[int, bytes]:
        """``GET {base_url}/models``: its status, and its body when ``read`` (at most
        :data:`MAX_LIST_BYTES`, else ValueError without reading the rest), all within
        ``remote_total_timeout_s`` (else httpx.TimeoutException)."""
        deadline = self._settings().remote_total_timeout_s
        try:
            if self._http is None:  # before the loop started (a pull right at start)
                async with self._client() as client:
                    return await asyncio.wait_for(self._get_models_with(client, spec, read),
                                                  deadline)
            return await asyncio.wait_for(self._get_models_with(self._http, spec, read),
                                          deadline)
        except asyncio.TimeoutError as exc:
            raise httpx.TimeoutException(f"no whole answer within {deadline:g} s") from exc

    async def _get_models_with(self, client: httpx.AsyncClient, spec: ReplicaSpec,
                               read: bool) -> tuple[int, bytes]:
        timeout = self._settings().remote_connect_timeout_s
        async with client.stream("GET", f"{spec.base_url}/models", headers=spec.auth_headers(),
                                 timeout=timeout) as resp:
            if not read or resp.status_code >= 400:
                return resp.status_code, b""
            body = bytearray()
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > MAX_LIST_BYTES:
                    raise ValueError(f"its model list is larger than {MAX_LIST_BYTES >> 20} MiB")
            return resp.status_code, bytes(body)

    def _set_up(self, replica: Replica, up: bool, error: str) -> None:
        """The one writer of a replica's state: schedules its next probe, emits a change."""
        settings = self._settings()
        now = time.monotonic()
        replica.last_error = error
        if up:
            replica.failures = 0
            replica.next_probe = now + settings.remote_probe_interval_s
        else:
            replica.failures += 1
            replica.next_probe = now + backoff_s(replica.failures,
                                                 settings.remote_probe_backoff_max_s)
        self._wake.set()
        if replica.up is up:
            return
        replica.up = up
        replica.changed_at = time.time()
        for spec in self._specs.values():
            if replica.spec in spec.replicas:
                model = self._model(spec)
                self._events.emit(
                    "reachable" if up else "unreachable", spec.name, "probe",
                    replica=replica.url, model_status=model.status,
                    replicas_up=sum(1 for r in model.replicas if r.up), error=error or None)
        if not up:
            log.warning("Remote replica %s is down: %s", replica.url, error)

    # ------------------------------------------------------------------ persistence
    def _forget_unused_replicas(self) -> None:
        used = {(r.base_url, r.api_key_env) for s in self._specs.values() for r in s.replicas}
        for key in set(self._replicas) - used:
            del self._replicas[key]

    def _save(self) -> None:
        if self._path is not None:
            write_json_atomic(self._path, [s.to_json() for s in self._specs.values()])

    def _load(self) -> None:
        if self._path is None:
            return
        for entry in read_json_or_quarantine(self._path, list) or []:
            spec = RemoteSpec.from_json(entry)
            if spec is None:
                log.warning("Skipping bad entry in %s: %r", self._path, entry)
                continue
            self._specs[spec.name] = spec


def _describe(exc: BaseException) -> str:
    """A failure in words, without headers (so never a key)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})" if str(exc) else "cannot connect"
    return str(exc) or type(exc).__name__
