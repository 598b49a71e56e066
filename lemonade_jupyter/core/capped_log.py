"""A backend's log file with a size cap: its start-up lines and its newest lines, never more.

Why a pipe and a thread: ``llama-server`` at the verbosity its memory-buffer report needs
(``-lv 4`` on a GPU, see :mod:`.launcher`) prints about 30 lines per request, so a router that
runs for weeks would fill its disk if the engine wrote to the file itself. A file the child
writes to (``O_APPEND``) cannot be shortened without losing what it writes meanwhile, so the
child writes to a pipe instead, and :class:`LogPump` copies the pipe into a :class:`CappedLog`
on a thread of its own (one per backend, blocking reads: the event loop never touches the
log). When the child dies the pipe ends and so does the thread; on a ``SIGKILL`` of the
server the child gets its parent-death signal (:mod:`.process`), so nothing waits on the pipe.

How the cap works: once the file would pass ``max_bytes`` it is rewritten (to a new file,
renamed over the old one) as its *head* (the first :data:`HEAD_BYTES`, at most a quarter of the
cap, up to a line end: the start-up lines :mod:`.memory_sources` parses), a marker line saying
how many bytes were cut in all, and the newest half of the rest from a line start. Each byte is
thus copied at most about twice, and the file stays under the cap. A reader that follows the
file notices the rename (a new inode) and finds its place again from the marker
(:func:`cut_info`).

Files are created ``0600``; the folder they live in is private (:mod:`.log_folder`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import select
import struct
import termios
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MIB = 1 << 20
#: The start of a log kept through every cut: llama-server's start-up lines.
HEAD_BYTES = 256 * 1024
#: Bytes read from the pipe at once.
READ_BYTES = 64 * 1024
#: Seconds one wait in the pump's poll lasts (it ends early on data or the pipe's end).
POLL_S = 1.0
_MARKER = (b"[lemonade: %d bytes of this log were cut here; the first and the newest lines "
           b"are kept]\n")
_MARKER_RE = re.compile(rb"\[lemonade: (\d+) bytes of this log were cut here;[^\n]*\n")
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class CutInfo:
    """Where a cut file's parts are: the head ends at ``head_len``, the marker line at
    ``marker_end``; ``cut`` bytes of log were left out in all."""

    head_len: int
    marker_end: int
    cut: int


def cut_info(start: bytes) -> CutInfo | None:
    """The cut of a log whose first bytes are ``start`` (at least :data:`HEAD_BYTES` and a
    marker line's worth of them); None if the log was never cut."""
    match = _MARKER_RE.search(start)
    return CutInfo(match.start(), match.end(), int(match.group(1))) if match else None


class CappedLog:
    """One log file that never grows past ``max_bytes``; written by one thread only.

    Appends to a file that already exists (a start retried on another port keeps writing the
    same log).
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._head_limit = min(HEAD_BYTES, max_bytes // 4)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a folder a caller named
        self._fd = os.open(path, _OPEN_FLAGS, 0o600)
        os.fchmod(self._fd, 0o600)
        self._size = os.fstat(self._fd).st_size
        #: Bytes of log left out so far.
        self.cut = 0
        self._head_len: int | None = None

    def write(self, data: bytes) -> None:
        """Append ``data``, then cut the middle if the file passed its cap."""
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        if self._size > self.max_bytes:
            self._cut_middle()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _cut_middle(self) -> None:
        with open(self.path, "rb") as fh:
            if self._head_len is None:  # the first cut: the head ends at a line end
                head = fh.read(self._head_limit)
                newline = head.rfind(b"\n")
                self._head_len = newline + 1 if newline >= 0 else len(head)
                head = head[:self._head_len]
                old_marker_end = self._head_len
            else:
                head = fh.read(self._head_len)
                found = _MARKER_RE.match(fh.read(256))
                old_marker_end = self._head_len + (found.end() if found else 0)
            room = self.max_bytes - self._head_len - len(_MARKER % (self.cut + self._size))
            start = max(old_marker_end, self._size - room // 2)
            fh.seek(start)
            tail = fh.read(self._size - start)
        if start > old_marker_end:  # begin at a line start
            newline = tail.find(b"\n")
            tail = tail[newline + 1:] if newline >= 0 else b""
        self.cut += self._size - old_marker_end - len(tail)
        content = head + _MARKER % self.cut + tail
        tmp = self.path.with_name(f".{self.path.name}.cut")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, _OPEN_FLAGS, 0o600)
        self._size = len(content)


class LogPump:
    """Copies a child's output from the read end of its pipe into a :class:`CappedLog`.

    Owns ``read_fd`` (closed at the pipe's end) and the log; its thread is the only writer.
    ``_copying`` (under ``_lock``) is True exactly while bytes are out of the pipe but not yet
    in the file, which is what makes :meth:`caught_up` exact.
    """

    def __init__(self, read_fd: int, capped: CappedLog) -> None:
        self._fd = read_fd
        self.log = capped
        self._lock = threading.Lock()
        self._copying = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name=f"log {capped.path.name}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def caught_up(self) -> bool:
        """True when everything the child wrote so far is in the file."""
        if not self._thread.is_alive():
            return True
        with self._lock:
            if self._copying:
                return False
            try:
                buf = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
            except OSError:
                return True  # closed: the pump is ending
            return struct.unpack("i", buf)[0] == 0

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Block (a worker thread, never the event loop) until :meth:`caught_up` or the
        timeout; True if it caught up."""
        done = threading.Event()
        deadline = timeout_s
        step = 0.002
        while not self.caught_up():
            if deadline <= 0:
                return False
            done.wait(step)
            deadline -= step
            step = min(step * 2, 0.05)
        return True

    def join(self, timeout_s: float) -> bool:
        """Wait (a worker thread) until the pipe ended and the file is closed; True if so."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            while True:
                if not poller.poll(POLL_S * 1000):
                    continue
                with self._lock:
                    self._copying = True
                try:
                    data = os.read(self._fd, READ_BYTES)
                    if not data:
                        return
                    self._write(data)
                finally:
                    with self._lock:
                        self._copying = False
        except OSError as exc:
            if exc.errno != errno.EBADF:
                log.warning("Backend log %s: %s", self.log.path, exc)
        finally:
            with self._lock:
                os.close(self._fd)
                self._fd = -1
            self.log.close()

    def _write(self, data: bytes) -> None:
        """Write to the log; a failing disk loses lines, never the backend (whose writes would
        block on a full pipe if nobody read it)."""
        try:
            self.log.write(data)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("Backend log %s: cannot write (%s); its lines are dropped",
                            self.log.path, exc)
