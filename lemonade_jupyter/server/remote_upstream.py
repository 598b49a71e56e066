"""HTTP from the proxy to remote models' replicas (vLLM, KServe, TGI...), on aiohttp.

Unlike the local backends (``upstream.py``: plain HTTP to loopback, no timeouts since the
router watches its own processes), a remote replica is someone else's server on the network,
and everything it sends back is bounded:

* ``https`` with certificate verification always on, against the system store or the CA bundle
  of ``c.LemonadeApp.remote_ca_bundle`` (the TLS context comes with each request);
* a connect timeout, a read timeout (the longest silence allowed) and a total deadline for the
  whole request, answer and stream included (a replica that drips one byte a second is cut);
* an answer that is not streamed is read up to a size cap, and the connection closed without
  reading the rest beyond it (:class:`~lemonade_jupyter.errors.RemoteAnswerTooLargeError`);
* a redirect is followed only within the same origin (scheme, host, port), keeping the method
  and body, at most :data:`MAX_REDIRECTS` times, and only where the replica did not act on the
  request (301, 302, 307, 308); any other is refused
  (:class:`~lemonade_jupyter.errors.RemoteRedirectError`), never passed back as an empty 3xx;
* no cookie jar: a cookie set by one upstream is never sent anywhere;
* what went wrong is told apart, because the failover acts on it (``RemoteRegistry.call``):
  :class:`~lemonade_jupyter.errors.ReplicaUnreachableError` and
  :class:`~lemonade_jupyter.errors.ReplicaTimeoutError`, each saying whether the replica may
  have received the request (``sent``).

A request is never resent here, not even on a fresh connection after a pooled one was closed:
a replica that read the request and then dropped the connection looks exactly like a stale
connection, and it would receive the request twice. Pooled connections are closed after
``idle_s`` of idleness instead, shorter than the keep-alive of common servers (uvicorn, which
vLLM runs on, keeps 5 s), so the replica does not close them first. No ``Accept-Encoding``: the
answers pass through byte for byte.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import urljoin, urlsplit

import aiohttp
import yarl

from ..core.remote_rules import HostRules
from ..errors import (
    RemoteAnswerTooLargeError, RemoteRedirectError, ReplicaTimeoutError, ReplicaTransportError,
    ReplicaUnreachableError,
)
from .remote_hosts import CheckedResolver
from .upstream import ChunkIteration, UpstreamResponse

_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")
#: Redirects followed per request at most.
MAX_REDIRECTS = 3
#: Redirects after which the replica has not acted on the request, so following one (within
#: the origin) sends the request once; 303 means it did act, and names where the result is.
_FOLLOWED = frozenset({301, 302, 307, 308})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: What a transport failure can look like (aiohttp's own errors, the OS's, a timeout).
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)
#: Bytes of an error answer of a stream read at most (the message passed back).
MAX_ERROR_BYTES = 64 << 10


def _failure(exc: BaseException, url: str, deadline: float) -> ReplicaTransportError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ReplicaUnreachableError(f"{url}: TLS certificate verification failed "
                                       f"({exc.certificate_error})", sent=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ReplicaUnreachableError(f"cannot connect to {url} ({exc.os_error or exc})",
                                       sent=False)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ReplicaTimeoutError(f"{url} timed out (no connection)", sent=False)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one too
        if asyncio.get_running_loop().time() >= deadline:
            return ReplicaTimeoutError(f"{url} timed out: no whole answer within the total "
                                       f"deadline (remote_total_timeout_s)", sent=True,
                                       marks_down=False)
        return ReplicaTimeoutError(f"{url} timed out", sent=True)
    return ReplicaUnreachableError(f"{url}: {exc or type(exc).__name__}", sent=True)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class RemoteStream(ChunkIteration):
    """A replica's streamed answer, relayed like a local backend's (``code``, ``headers``, then
    ``async for chunk in stream``); a failure mid-answer is a ReplicaTransportError.

    Each chunk is everything that has arrived since the last one, cut anywhere (not at event
    boundaries)."""

    def __init__(self, response: aiohttp.ClientResponse, url: str, deadline: float) -> None:
        self._response = response
        self._content = response.content
        self.code: int = response.status
        self.headers: Mapping[str, str] = response.headers
        self._url = url
        self._deadline = deadline

    def _failure(self, exc: BaseException) -> Exception:
        return _failure(exc, self._url, self._deadline)

    async def next_chunk(self) -> bytes:
        """Everything that has arrived (waiting for something); ``b""`` at the end."""
        try:
            return await self._content.readany()
        except _TRANSPORT_ERRORS as exc:
            raise self._failure(exc) from exc

    def arrived(self) -> bytes:
        """What has arrived and was not taken yet, without waiting (``b""``: nothing yet, or
        the end)."""
        try:
            return self._content.read_nowait()
        except _TRANSPORT_ERRORS as exc:
            raise self._failure(exc) from exc

    async def read(self) -> bytes:
        """The error answer, up to :data:`MAX_ERROR_BYTES` (the rest is not read)."""
        body = bytearray()
        async for chunk in self:
            body += chunk
            if len(body) >= MAX_ERROR_BYTES:
                break
        return bytes(body[:MAX_ERROR_BYTES])

    async def aclose(self) -> None:
        """Give the connection back when the answer was read to its end, else close it."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class RemoteUpstream:
    """Connections to remote replicas: one pooled aiohttp session, made on first use.

    Once :meth:`check_hosts` has the host rules (the server knows its own port when it starts),
    each name is checked again by them when a connection to it is opened
    (``remote_hosts.CheckedResolver``: DNS rebinding)."""

    def __init__(self, *, idle_s: float = 4.0) -> None:
        self.idle_s = idle_s
        self._session: aiohttp.ClientSession | None = None
        self._rules: Callable[[], HostRules] | None = None

    def check_hosts(self, rules: Callable[[], HostRules]) -> None:
        """Check every connection's resolved addresses with ``rules()``; before the first
        request (``Services.start``), so no connection escapes the check."""
        if self._session is not None:
            raise RuntimeError("check_hosts comes before the first remote request")
        self._rules = rules

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            resolver = CheckedResolver(self._rules) if self._rules is not None else None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=self.idle_s,
                                               resolver=resolver),
                auto_decompress=False, skip_auto_headers=_SKIP_AUTO_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def _send(self, url: str, body: bytes, headers: dict[str, str], tls: ssl.SSLContext,
                    connect_s: float, read_s: float, deadline: float) -> aiohttp.ClientResponse:
        """POST ``body``, following same-origin redirects; the response's headers are in."""
        loop = asyncio.get_running_loop()
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ReplicaTimeoutError(f"{url} timed out: no whole answer within the "
                                          f"total deadline (remote_total_timeout_s)",
                                          sent=True, marks_down=False)
            timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=connect_s,
                                            connect=connect_s, sock_read=read_s)
            try:
                # encoded=True: the URL is sent as registered (aiohttp would decode "%40").
                response = await self._get().post(
                    yarl.URL(url, encoded=True), data=body, headers=headers, ssl=tls,
                    allow_redirects=False, timeout=timeout)
            except _TRANSPORT_ERRORS as exc:
                raise _failure(exc, url, deadline) from exc
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location", "")
            response.close()  # its body is of no use: never read
            target = urljoin(url, location) if location else ""
            if response.status not in _FOLLOWED or _origin(target) != origin:
                where = "no Location" if not target else "{}://{}:{}".format(*_origin(target))
                raise RemoteRedirectError(
                    f"{url} answered a redirect ({response.status}, to {where}) that is not "
                    f"followed: only 301, 302, 307 and 308 within the same scheme, host and "
                    f"port are. Register the URL it points to instead", param="model")
            url = target
        raise RemoteRedirectError(
            f"{url}: more than {MAX_REDIRECTS} redirects; register the final URL instead",
            param="model")

    async def post(self, url: str, body: bytes, headers: dict[str, str], *,
                   tls: ssl.SSLContext, connect_s: float, read_s: float, deadline: float,
                   max_bytes: int) -> UpstreamResponse:
        """Send a POST and read the whole answer, at most ``max_bytes`` of it, by ``deadline``
        (the loop's clock). Raises ReplicaTransportError, RemoteRedirectError or
        RemoteAnswerTooLargeError (the connection closed, the rest unread)."""
        response = await self._send(url, body, headers, tls, connect_s, read_s, deadline)
        try:
            async with response:
                if (response.content_length or 0) > max_bytes:
                    raise self._too_large(response, url, max_bytes)
                data = bytearray()
                while chunk := await response.content.readany():
                    data += chunk
                    if len(data) > max_bytes:
                        raise self._too_large(response, url, max_bytes)
                return UpstreamResponse(response.status, response.headers, bytes(data))
        except _TRANSPORT_ERRORS as exc:
            raise _failure(exc, url, deadline) from exc

    @staticmethod
    def _too_large(response: aiohttp.ClientResponse, url: str,
                   max_bytes: int) -> RemoteAnswerTooLargeError:
        response.close()
        return RemoteAnswerTooLargeError(
            f"{url} answered more than remote_max_answer_mib ({max_bytes / (1 << 20):g} MiB); "
            f"the answer was cut. Ask for a shorter answer, stream it, or raise the setting",
            param="model")

    async def stream(self, url: str, body: bytes, headers: dict[str, str], *,
                     tls: ssl.SSLContext, connect_s: float, read_s: float,
                     deadline: float) -> RemoteStream:
        """Send a POST; return once the answer's headers are in (the stream ends by
        ``deadline``). Raises ReplicaTransportError or RemoteRedirectError."""
        response = await self._send(url, body, headers, tls, connect_s, read_s, deadline)
        return RemoteStream(response, url, deadline)

    async def close(self) -> None:
        """Close every connection (the extension is stopping)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
