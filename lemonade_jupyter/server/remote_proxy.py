"""The proxy's transport to remote models: one request, sent to the replicas the core chooses.

A request whose model is remote takes this path instead of a lease (no slot, no auto-load).
The retry rule, replica choice and the final errors are the core's (``RemoteRegistry.call``,
``core/remote_failover.py``); this module only says how one attempt is sent and how its answer
reaches the client (``relay.py``, the same relay as for local backends):

* the JSON body's ``model`` becomes the upstream's name on the way out; the answer's ``model``
  becomes the name the client asked for on the way back (streaming included);
* every request carries the hop header (``core/remote_hops.py``): the routers it came
  through, then this one, so a remote model that leads back here is refused after one hop;
* the connect, read and total timeouts, the size cap of an answer that is not streamed and
  the same-origin redirects are the transport's (``remote_upstream.py``);
* a stream may go on to another replica only while the replica's answer has not started;
* the key goes in the ``Authorization`` header to its own replica only, read from the server's
  environment at each request; an upstream error message that echoes it is redacted.
"""

from __future__ import annotations

import json
from typing import Any

from ..core.remote import RemoteAttempt, RemoteModel, RemoteRegistry
from ..core.settings import RouterSettings
from ..errors import InvalidRequestError
from .openai_checks import check_request
from .relay import AnswerRelay
from .remote_upstream import RemoteUpstream
from .upstream import UpstreamResponse

REDACTED = b"[redacted]"


def redact(payload: bytes, model: RemoteModel) -> bytes:
    """``payload`` without any key of ``model``'s replicas (for upstream error messages)."""
    for replica in model.replicas:
        key = replica.spec.api_key()
        if key:
            payload = payload.replace(key.encode(), REDACTED)
    return payload


def check_remote_request(path: str, model: RemoteModel, body: dict[str, Any]) -> None:
    """Refuse, before anything is sent, a route or a body the remote model cannot serve."""
    if not path.startswith("/v1/"):
        raise InvalidRequestError(
            f"'{model.name}' is a remote model: only the OpenAI-style routes (/v1/...) are "
            f"forwarded to its engine, not llama.cpp's own {path}", param="model")
    check_request(path, model.spec, body)  # type: ignore[arg-type]


class RemoteForwarder:
    """Sends one proxied request to a remote model's replicas and relays the answer."""

    def __init__(self, *, registry: RemoteRegistry, upstream: RemoteUpstream,
                 settings: RouterSettings, relay: AnswerRelay, path: str,
                 incoming_hops: str | None, method: str = "POST") -> None:
        self._registry = registry
        self._upstream = upstream
        self._settings = settings
        self._relay = relay
        self._path = path
        self._incoming_hops = incoming_hops
        self._method = method

    def _request(self, attempt: RemoteAttempt, body: dict[str, Any]
                 ) -> tuple[str, bytes, dict[str, str], dict[str, Any]]:
        """URL, body, headers and transport options of one attempt."""
        path = self._path.removeprefix("/v1")  # base_url is the upstream's /v1 root
        payload = json.dumps({**body, "model": attempt.model.spec.upstream_model}).encode()
        headers = {**attempt.headers(), "Content-Type": "application/json",
                   **self._registry.hops.outgoing(self._incoming_hops)}
        options = {"tls": self._registry.tls, "connect_s": self._settings.remote_connect_timeout_s,
                   "read_s": self._settings.remote_timeout_s, "deadline": attempt.deadline}
        return attempt.base_url + path, payload, headers, options

    async def plain(self, model: RemoteModel, body: dict[str, Any]) -> None:
        """Serve ``body`` as one whole answer (read up to ``remote_max_answer_mib``)."""
        max_bytes = int(self._settings.remote_max_answer_mib * (1 << 20))

        async def send(attempt: RemoteAttempt) -> UpstreamResponse:
            url, payload, headers, options = self._request(attempt, body)
            return await self._upstream.post(url, payload, headers, **options,
                                             max_bytes=max_bytes)

        resp = await self._registry.call(model.name, send, method=self._method)
        self._relay.plain(resp, model.name, lambda b: redact(b, model), stats=False)

    async def stream(self, model: RemoteModel, body: dict[str, Any]) -> None:
        """Serve ``body`` as a stream; raises our errors only before the first byte."""
        started = False

        async def send(attempt: RemoteAttempt) -> None:
            nonlocal started
            url, payload, headers, options = self._request(attempt, body)
            resp = await self._relay.with_pings(
                self._upstream.stream(url, payload, headers, **options))
            started = True  # the replica answered: a failure from now on is mid-answer
            try:
                await self._relay.stream(resp, model.name, lambda b: redact(b, model))
            finally:
                await resp.aclose()

        await self._registry.call(model.name, send, replayable=lambda: not started,
                                  method=self._method)
