"""HTTP from the proxy to remote models' replicas (vLLM, KServe, TGI...), on aiohttp.

Unlike the local backends (``upstream.py``: plain HTTP to loopback, no timeouts since the
router watches its own processes), a remote replica is someone else's server on the network:

* ``https`` with certificate verification always on, against the system store or the CA bundle
  of ``c.LemonadeApp.remote_ca_bundle`` (the TLS context comes with each request);
* a connect timeout and a read timeout (the longest silence allowed), from the settings;
* what went wrong is told apart, because the proxy acts on it: :class:`ReplicaUnreachable`
  (refused, reset before an answer, unresolvable, TLS failure: mark the replica down, try
  another) and :class:`ReplicaTimeout` (the same, but a 504 when no replica is left).

Keep-alive connections are shared by plain requests and streams (an upstream that closes a
connection after a stream is one whose next request on it fails before any answer: that is
retried once on a fresh connection, the race ``upstream.py`` describes). No ``Accept-Encoding``:
the answers pass through byte for byte.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp

from .upstream import ChunkStream, UpstreamResponse

_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")
#: The replica closed a pooled connection before any answer: resent once on a fresh one.
_CLOSED_BEFORE_ANSWER = (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError)


class ReplicaFailure(Exception):
    """A request could not get (all of) an answer from a replica. ``str()`` holds no header."""


class ReplicaUnreachable(ReplicaFailure):
    """Refused, reset, closed before an answer, unresolvable, or TLS verification failed."""


class ReplicaTimeout(ReplicaFailure):
    """No connection within the connect timeout, or silence beyond the read timeout."""


def _failure(exc: BaseException, url: str) -> ReplicaFailure:
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return ReplicaTimeout(f"{url} timed out")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ReplicaUnreachable(f"{url}: TLS certificate verification failed "
                                  f"({exc.certificate_error})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ReplicaUnreachable(f"cannot connect to {url} ({exc.os_error or exc})")
    return ReplicaUnreachable(f"{url}: {exc or type(exc).__name__}")


class RemoteStream(ChunkStream):
    """A replica's streamed answer, relayed like a local backend's; failures are ReplicaFailure."""

    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        super().__init__(response)
        self._url = url

    def _failure(self, exc: BaseException) -> Exception:
        return _failure(exc, self._url)

    async def aclose(self) -> None:
        """Give the connection back when the answer was read to its end, else close it."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class RemoteUpstream:
    """Connections to remote replicas: one pooled aiohttp session, made on first use."""

    def __init__(self, *, idle_s: float = 15.0) -> None:
        self.idle_s = idle_s
        self._session: aiohttp.ClientSession | None = None
        self._once: aiohttp.ClientSession | None = None

    def _get(self, pooled: bool) -> aiohttp.ClientSession:
        session = self._session if pooled else self._once
        if session is None or session.closed:
            connector = (aiohttp.TCPConnector(limit=0, keepalive_timeout=self.idle_s)
                         if pooled else aiohttp.TCPConnector(limit=0, force_close=True))
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                            skip_auto_headers=_SKIP_AUTO_HEADERS)
            if pooled:
                self._session = session
            else:
                self._once = session
        return session

    async def _send(self, url: str, body: bytes, headers: dict[str, str], tls: ssl.SSLContext,
                    connect_s: float, read_s: float) -> aiohttp.ClientResponse:
        options: dict[str, Any] = dict(
            data=body, headers=headers, ssl=tls, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s, connect=connect_s,
                                          sock_read=read_s))
        try:
            try:
                return await self._get(True).post(url, **options)
            except _CLOSED_BEFORE_ANSWER:
                return await self._get(False).post(url, **options)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _failure(exc, url) from exc

    async def post(self, url: str, body: bytes, headers: dict[str, str], *,
                   tls: ssl.SSLContext, connect_s: float, read_s: float) -> UpstreamResponse:
        """Send a POST and read the whole answer; raises ReplicaFailure."""
        response = await self._send(url, body, headers, tls, connect_s, read_s)
        try:
            async with response:
                return UpstreamResponse(response.status, response.headers, await response.read())
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise _failure(exc, url) from exc

    async def stream(self, url: str, body: bytes, headers: dict[str, str], *,
                     tls: ssl.SSLContext, connect_s: float, read_s: float) -> RemoteStream:
        """Send a POST; return once the answer's headers are in. Raises ReplicaFailure."""
        return RemoteStream(await self._send(url, body, headers, tls, connect_s, read_s), url)

    async def close(self) -> None:
        """Close every connection (the extension is stopping)."""
        sessions = [s for s in (self._session, self._once) if s is not None]
        self._session = self._once = None
        for session in sessions:
            await session.close()
