"""HTTP to the Hugging Face Hub for one pull: the file listing, a file's metadata, its bytes.

Why a few requests of our own rather than ``huggingface_hub.hf_hub_download``: a pull must stop
the moment it is cancelled (the library looks at its progress callback once per 10 MiB and
blocks on the socket in between), must fail within seconds when the hub cannot be reached (the
library retries for about 25 s), and must hash what it writes so that a curated file can be
checked before it is kept. The files still land in ``huggingface_hub``'s cache layout (a blob
per ETag, snapshot links to it, ``refs/main``), so other tools share them.

Bounds: connecting (name lookup included) takes at most :data:`CONNECT_TIMEOUT_S`; a hub that
sends nothing for :data:`READ_TIMEOUT_S` fails the pull; a connection that breaks mid-file is
resumed with a ``Range`` request at most :data:`RESUMES` times; the listing follows at most
:data:`LISTING_PAGES` pages and redirects are followed at most :data:`MAX_REDIRECTS` times.
A failed connection is never retried: the error comes at once.

:class:`Hangup` is the one object shared between threads: the pull's thread makes requests, and
any thread may hang up, which shuts down every socket of the pull so that a read blocked in the
pull's thread returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

#: Seconds to resolve the hub's name and open a connection to it.
CONNECT_TIMEOUT_S = 5.0
#: Seconds of silence from the hub (no header, no byte) before a pull fails.
READ_TIMEOUT_S = 30.0
#: Times a file whose connection broke is resumed where it stopped.
RESUMES = 5
#: Seconds between a broken connection and its resume.
RESUME_PAUSE_S = 1.0
LISTING_PAGES = 100
MAX_REDIRECTS = 10
#: Bytes between two progress reports of one file.
REPORT_BYTES = 4 * 1024 * 1024
_READ_BYTES = 1024 * 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ETAG = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


class HubCancelled(Exception):
    """The pull was hung up (raised in the pull's thread)."""


class HubStatusError(Exception):
    """The hub answered a request with an error status (mapped to words by ``hub_errors``)."""

    def __init__(self, status: int, error_code: str, what: str) -> None:
        super().__init__(f"{status} {error_code} for {what}")
        self.status, self.error_code, self.what = status, error_code, what


class HubAnswerError(Exception):
    """The hub answered 2xx with something that is not what a Hugging Face Hub sends."""


class Hangup:
    """A pull's cancel switch: :meth:`set` from any thread shuts down the pull's sockets.

    Owns the set of sockets the pull opened (written by the pull's thread as it connects, read
    by whoever hangs up); the lock guards that set and the flag together, so a socket connected
    after the hang-up is shut down as soon as it is registered.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True at once when the pull is hung up."""
        return self._event.wait(timeout)

    def check(self) -> None:
        if self._event.is_set():
            raise HubCancelled()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            hung_up = self._event.is_set()
        if hung_up:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        # shutdown() wakes a recv() blocked in another thread; close() would not.
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


@dataclass(frozen=True)
class ListedFile:
    """A file of a repository's listing: its size, and its sha256 when the hub keeps it in
    LFS (every GGUF)."""

    path: str
    size: int | None
    sha256: str | None = None


@dataclass(frozen=True)
class FileMeta:
    """What the hub says of one file before it is fetched."""

    commit: str
    etag: str
    size: int | None


@dataclass(frozen=True)
class Fetched:
    """A file written to the cache's blobs folder under a private temporary name."""

    path: Path
    size: int
    sha256: str


class HubSession:
    """The requests of one pull, on one ``httpx.Client`` whose sockets ``hangup`` can shut."""

    def __init__(self, endpoint: str, token: str | None, hangup: Hangup) -> None:
        self.endpoint = endpoint
        self.hangup = hangup
        # identity: the bytes written must be the file's bytes (they are hashed and checked).
        headers = {"User-Agent": "lemonade-jupyter", "Accept-Encoding": "identity"}
        if token:
            # httpx drops it on a redirect to another origin (the CDN never sees it).
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            headers=headers, max_redirects=MAX_REDIRECTS,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
        self._resolved = False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HubSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                self.hangup.watch(sock)

    def _resolve_host(self, url: str) -> None:
        """Look the hub's name up within CONNECT_TIMEOUT_S (httpx does not bound the lookup)."""
        if self._resolved:
            return
        host = urllib.parse.urlsplit(url).hostname or ""
        outcome: list[BaseException | None] = []

        def lookup() -> None:
            try:
                socket.getaddrinfo(host, None)
                outcome.append(None)
            except OSError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=lookup, daemon=True, name="lemonade-pull-dns")
        worker.start()
        worker.join(CONNECT_TIMEOUT_S)
        if not outcome:
            raise httpx.ConnectTimeout(f"the name {host} did not resolve within "
                                       f"{CONNECT_TIMEOUT_S:g} s")
        if outcome[0] is not None:
            raise httpx.ConnectError(f"the name {host} does not resolve") from outcome[0]
        self._resolved = True

    @contextmanager
    def _request(self, method: str, url: str, what: str, *, follow: bool = True,
                 headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        self.hangup.check()
        self._resolve_host(url)
        try:
            with self._client.stream(method, url, headers=headers, follow_redirects=follow,
                                     extensions={"trace": self._trace}) as response:
                self.hangup.check()
                if response.status_code >= 400:
                    raise HubStatusError(response.status_code,
                                         response.headers.get("X-Error-Code", ""), what)
                yield response
        except (httpx.TransportError, OSError):
            self.hangup.check()  # a hang-up shows as a broken connection: say what it was
            raise

    # -- the three requests -------------------------------------------------------------------
    def list_files(self, repo_id: str) -> list[ListedFile]:
        """Every file of the repository's ``main`` (paths as the hub has them)."""
        url: str | None = f"{self.endpoint}/api/models/{_quote(repo_id)}/tree/main?recursive=true"
        files: list[ListedFile] = []
        for _page in range(LISTING_PAGES):
            if url is None:
                return files
            with self._request("GET", url, f"the file listing of {repo_id}") as response:
                body = response.read()
                link = response.headers.get("Link", "")
            files.extend(_listing(body))
            found = _NEXT.search(link)
            url = urllib.parse.urljoin(url, found[1]) if found else None
        raise HubAnswerError(f"the file listing of {repo_id} has more than {LISTING_PAGES} pages")

    def file_meta(self, repo_id: str, revision: str, path: str) -> FileMeta:
        """The commit, ETag and size of a file (a ``HEAD``; same-host redirects followed)."""
        url = self.file_url(repo_id, revision, path)
        for _hop in range(MAX_REDIRECTS):
            with self._request("HEAD", url, f"file {path} of {repo_id}", follow=False) as r:
                headers = r.headers
                location = headers.get("Location", "")
            if r.is_redirect and location.startswith("/") and not headers.get("X-Repo-Commit"):
                url = urllib.parse.urljoin(url, location)  # a renamed repository
                continue
            break
        commit = headers.get("X-Repo-Commit", "")
        etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "")
        etag = etag.removeprefix("W/").strip('"')
        if not _COMMIT.match(commit) or not _ETAG.match(etag):
            raise HubAnswerError(f"file {path} of {repo_id} came without its commit and ETag")
        size = headers.get("X-Linked-Size") or headers.get("Content-Length")
        return FileMeta(commit, etag, int(size) if size and size.isdigit() else None)

    def file_url(self, repo_id: str, revision: str, path: str) -> str:
        return f"{self.endpoint}/{_quote(repo_id)}/resolve/{_quote(revision)}/{_quote(path)}"

    def download(self, url: str, into: Path, expected: int | None,
                 report: Callable[[int], None], *, hashed: bool = True) -> Fetched:
        """Write the file at ``url`` to a new temporary file in ``into``; with ``hashed``,
        compute its sha256 on the way (else ``Fetched.sha256`` is "": hashing costs CPU that
        an unchecked pull need not spend).

        A connection that breaks after bytes came is resumed with ``Range`` (RESUMES times);
        the temporary file is removed on any failure, a hang-up included. Raises the httpx
        error of the last try, HubStatusError, HubCancelled, or OSError from the disk.
        """
        into.mkdir(parents=True, exist_ok=True)
        tmp = into / f"{uuid.uuid4().hex}.incomplete"
        got = _Received(hashed)
        try:
            with open(tmp, "wb") as fh:
                resumes = RESUMES
                while True:
                    before = got.size
                    try:
                        self._stream(url, fh, got, report)
                        break
                    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
                        if resumes <= 0 or got.size == before:
                            raise
                        resumes -= 1
                        if self.hangup.wait(RESUME_PAUSE_S):
                            raise HubCancelled() from None
            if expected is not None and got.size != expected:
                raise HubAnswerError(f"the hub sent {got.size} bytes of a {expected}-byte file")
            return Fetched(tmp, got.size, got.digest.hexdigest() if hashed else "")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _stream(self, url: str, fh: Any, got: _Received, report: Callable[[int], None]) -> None:
        headers = {"Range": f"bytes={got.size}-"} if got.size else None
        with self._request("GET", url, "a file download", headers=headers) as response:
            if got.size and response.status_code != 206:  # the range was ignored: start over
                fh.seek(0)
                fh.truncate()
                got.restart()
            reported = got.size
            report(got.size)
            for chunk in response.iter_raw(_READ_BYTES):
                self.hangup.check()
                write_chunk(fh, chunk)
                got.add(chunk)
                if got.size - reported >= REPORT_BYTES:
                    reported = got.size
                    report(got.size)
            self.hangup.check()
            report(got.size)


class _Received:
    """The bytes of one file written so far and their running hash (kept across resumes)."""

    def __init__(self, hashed: bool) -> None:
        self.hashed = hashed
        self.size = 0
        self.digest = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        if self.hashed:
            self.digest.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self.size, self.digest = 0, hashlib.sha256()


def write_chunk(fh: Any, chunk: bytes) -> None:
    """Write one chunk of a download (a seam: tests make the disk fill up here)."""
    fh.write(chunk)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="/")


def _listing(body: bytes) -> Iterator[ListedFile]:
    """The files of one page of a tree listing; HubAnswerError for anything else."""
    try:
        entries = json.loads(body)
    except ValueError:
        raise HubAnswerError("the file listing is not JSON") from None
    if not isinstance(entries, list):
        raise HubAnswerError("the file listing is not a list of files")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise HubAnswerError("the file listing is not a list of files")
        if entry.get("type") == "file":
            size = entry.get("size")
            lfs = entry.get("lfs")
            oid = lfs.get("oid") if isinstance(lfs, dict) else None
            yield ListedFile(entry["path"], size if isinstance(size, int) and size >= 0 else None,
                             oid if isinstance(oid, str) and _SHA256.match(oid) else None)


def link_snapshot(storage: Path, commit: str, path: str, blob: Path) -> Path:
    """Point ``snapshots/COMMIT/PATH`` at ``blob`` (a relative link, as ``huggingface_hub``
    makes it) and return the link."""
    link = storage / "snapshots" / commit / path
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, link.parent)
    tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.link")
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


def write_ref(storage: Path, commit: str) -> None:
    refs = storage / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    tmp = refs / f".main.{uuid.uuid4().hex[:8]}"
    tmp.write_text(commit)
    os.replace(tmp, refs / "main")


def hash_file(path: str | Path, hangup: Hangup) -> str:
    """The sha256 of a file already on disk (a cached blob that must be checked)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * _READ_BYTES):
            hangup.check()
            digest.update(chunk)
    return digest.hexdigest()

