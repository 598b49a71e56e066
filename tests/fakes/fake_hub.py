#!/usr/bin/env python3
"""A local stand-in for the Hugging Face Hub: the endpoints a pull calls (as ``huggingface_hub``).

* ``GET /api/models/ORG/REPO/tree/REV?recursive=…``: the repository's files with their sizes
  (``HfApi.list_repo_tree``), one page.
* ``HEAD /ORG/REPO/resolve/REV/PATH``: the metadata ``hf_hub_download`` asks first
  (``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``).
* ``GET /ORG/REPO/resolve/REV/PATH``: the bytes, with ``Range`` support (``206``).
* Errors the way the hub sends them: a status plus ``X-Error-Code`` (``RepoNotFound``,
  ``EntryNotFound``, ``RevisionNotFound``, ``GatedRepo``) and ``X-Error-Message``.

Repositories map file names to local files (several names may share one file). Per
repository: ``private`` (needs ``Authorization: Bearer <token>``; 401 otherwise), ``gated``
(403 ``GatedRepo`` to everyone), ``status`` (every request of the repository answers that
status, e.g. 500), ``bad_listing`` (the file listing is not JSON), ``gone`` (files listed that
answer 404 ``EntryNotFound``, as after a rewrite of the repository), ``cut_at`` (the first GET of
each file stops after that many bytes and closes the connection, as a dropped network does),
``rate`` (bytes per second; 0 is unthrottled, served with ``sendfile``), ``stall_at`` and
``stall_s`` (a throttled download goes silent for that many seconds once that many bytes are
sent, as a stuck network does; a client that hangs up meanwhile is seen at once). A file's
ETag is the sha256 of its bytes, as the hub's is for a GGUF (LFS) file.

``GET /_fake/stats`` lists every request (method, path, ``Range``, status, bytes sent, and for a
file body ``ended``: the wall-clock time it stopped, ``complete``: whether it was all sent, so
a test sees when a client hung up);
``POST /_fake/reset`` clears it, cuts the next first GETs again and restores every
repository's settings; ``POST /_fake/set`` with ``{"repo": NAME, KEY: VALUE…}`` changes the
settings of a repository (``rate``, ``stall_at``…) for the next requests.

Run as ``fake_hub.py CONFIG.json``: it prints ``{"port": N}`` once it listens. :class:`FakeHub`
does that from a test or a benchmark.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
CHUNK = 256 * 1024


class Hub:
    """The fake's state: its configuration, what it served, which files were already cut."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.repos: dict[str, dict[str, Any]] = config["repos"]
        self.token: str = config.get("token", "")
        self.log: list[dict[str, Any]] = []
        self.cut_done: set[tuple[str, str]] = set()
        self.original = copy.deepcopy(self.repos)
        self.lock = threading.Lock()
        self._digests: dict[str, str] = {}

    def digest(self, local: str) -> str:
        """The sha256 of a served file (computed once)."""
        with self.lock:
            known = self._digests.get(local)
        if known is None:
            sha = hashlib.sha256()
            with open(local, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    sha.update(chunk)
            known = sha.hexdigest()
            with self.lock:
                self._digests[local] = known
        return known

    def record(self, **entry: Any) -> None:
        with self.lock:
            self.log.append(entry)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer  # with a ``hub`` attribute

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    @property
    def hub(self) -> Hub:
        return self.server.hub  # type: ignore[attr-defined,no-any-return]

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", record: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if record:
            self.hub.record(
                method=self.command, path=self.path, range=self.headers.get("Range"),
                status=status, sent=0 if self.command == "HEAD" else len(body))

    def _error(self, status: int, code: str, message: str, **headers: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message, **headers})

    def _authorized(self, repo: dict[str, Any]) -> bool:
        """False after answering 401 (the hub's answer to a private repository)."""
        if not repo.get("private"):
            return True
        auth = self.headers.get("Authorization", "")
        if auth == f"Bearer {self.hub.token}":
            return True
        if auth:
            self._error(401, "", "Invalid credentials in Authorization header")
        else:
            self._error(401, "RepoNotFound", "Repository not found")
        return False

    def _repo(self, name: str, rev: str) -> dict[str, Any] | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if not self._authorized(repo):
            return None
        if repo.get("gated"):
            self._error(403, "GatedRepo", "Access to this model is restricted: you must accept "
                        "its conditions")
            return None
        if repo.get("status"):
            self._error(int(repo["status"]), "", "Internal Error")
            return None
        if rev not in ("main", COMMIT):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo

    # -- routes -------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_fake/stats":
            with self.hub.lock:
                body = json.dumps({"requests": list(self.hub.log)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        tree = _TREE.match(path)
        if tree:
            self._tree(tree["repo"], urllib.parse.unquote(tree["rev"]))
            return
        self._resolve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._resolve()

    def do_POST(self) -> None:  # noqa: N802
        if urllib.parse.urlsplit(self.path).path == "/_fake/reset":
            with self.hub.lock:
                self.hub.log.clear()
                self.hub.cut_done.clear()
                self.hub.repos = copy.deepcopy(self.hub.original)
            self._send(200, b"{}", record=False)
            return
        if urllib.parse.urlsplit(self.path).path == "/_fake/set":
            wanted = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with self.hub.lock:
                self.hub.repos[wanted.pop("repo")].update(wanted)
            self._send(200, b"{}", record=False)
            return
        self._error(404, "", "no such route")

    def _tree(self, name: str, rev: str) -> None:
        repo = self._repo(name, rev)
        if repo is None:
            return
        if repo.get("bad_listing"):
            self._send(200, b"<html>not a file list</html>", content_type="text/html")
            return
        entries = []
        for rel, local in sorted(repo["files"].items()):
            size = os.path.getsize(local)
            etag = self.hub.digest(local)
            entry: dict[str, Any] = {"type": "file", "oid": etag[:40], "size": size,
                                     "path": rel}
            if rel.endswith(".gguf"):
                entry["lfs"] = {"oid": etag, "size": size, "pointerSize": 134}
            entries.append(entry)
        self._send(200, json.dumps(entries).encode())

    def _resolve(self) -> None:
        m = _RESOLVE.match(urllib.parse.urlsplit(self.path).path)
        if m is None:
            self._error(404, "", "no such route")
            return
        name, rev = m["repo"], urllib.parse.unquote(m["rev"])
        rel = urllib.parse.unquote(m["path"])
        repo = self._repo(name, rev)
        if repo is None:
            return
        local = repo["files"].get(rel)
        if local is None or rel in repo.get("gone", ()):
            self._error(404, "EntryNotFound", f"{rel} does not exist on main",
                        **{"X-Repo-Commit": COMMIT})
            return
        size = os.path.getsize(local)
        start, end = 0, size - 1
        status = 200
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted and self.command == "GET":
            start = int(wanted[1])
            end = min(int(wanted[2]), size - 1) if wanted[2] else size - 1
            status = 206
        etag = self.hub.digest(local)
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            self.hub.record(method="HEAD", path=self.path, range=None, status=status, sent=0)
            return
        limit = end + 1
        cut = repo.get("cut_at")
        if cut and (name, rel) not in self.hub.cut_done and start < cut < limit:
            with self.hub.lock:
                self.hub.cut_done.add((name, rel))
            limit = cut
            self.close_connection = True
        stall = (int(repo.get("stall_at") or 0), float(repo.get("stall_s") or 0))
        sent = self._body(local, start, limit, float(repo.get("rate") or 0), stall)
        self.hub.record(method="GET", path=self.path, range=self.headers.get("Range"),
                        status=status, sent=sent, ended=time.time(),
                        complete=start + sent == end + 1)
        if self.close_connection:
            self.connection.shutdown(2)

    def _body(self, local: str, start: int, limit: int, rate: float,
              stall: tuple[int, float] = (0, 0.0)) -> int:
        sent = 0
        with open(local, "rb") as fh:
            if not rate:
                try:
                    return self.connection.sendfile(fh, start, limit - start)
                except (BrokenPipeError, ConnectionResetError):
                    return sent
            fh.seek(start)
            began = time.monotonic()
            while start + sent < limit:
                if stall[1] and start + sent >= stall[0]:
                    if self._hung_up_within(stall[1]):
                        self.close_connection = True
                        break
                    stall = (0, 0.0)
                chunk = fh.read(min(CHUNK, limit - start - sent, max(stall[0] - start - sent, 0)
                                    or CHUNK))
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    break
                sent += len(chunk)
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        return sent


    def _hung_up_within(self, seconds: float) -> bool:
        """Send nothing for ``seconds``; True as soon as the client closes its end."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return True
                except OSError:
                    return True
        return False


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.hub = Hub(config)  # type: ignore[attr-defined]
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


class FakeHub:
    """Run the fake hub in a subprocess: ``with FakeHub(repos, tmp_path) as hub: hub.url``."""

    def __init__(self, repos: dict[str, dict[str, Any]], workdir: Path, token: str = "") -> None:
        self.repos, self.token = repos, token
        self.config = Path(workdir) / "fake_hub.json"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> FakeHub:
        self.config.write_text(json.dumps({"repos": self.repos, "token": self.token}))
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.config)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests(self) -> list[dict[str, Any]]:
        """Every request served since the last reset, oldest first."""
        import httpx

        return httpx.get(f"{self.url}/_fake/stats", timeout=10).json()["requests"]  # type: ignore[no-any-return]

    def downloads(self, path_part: str) -> list[dict[str, Any]]:
        """The GETs of files whose URL contains ``path_part``."""
        return [r for r in self.requests()
                if r["method"] == "GET" and "/resolve/" in r["path"] and path_part in r["path"]]

    def reset(self) -> None:
        import httpx

        httpx.post(f"{self.url}/_fake/reset", timeout=10)

    def configure(self, repo: str, **settings: Any) -> None:
        """Change settings of ``repo`` (``rate``, ``stall_at``…) until the next reset."""
        import httpx

        httpx.post(f"{self.url}/_fake/set", json={"repo": repo, **settings}, timeout=10)


if __name__ == "__main__":
    main()
