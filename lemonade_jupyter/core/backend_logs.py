"""Backend log files: where each one lives, reading their last lines, following them, redacting.

Every start of a backend writes what ``llama-server`` prints to its own file in the launcher's
log folder, ``<model>.<generation>.log``; a reload starts a new file with a higher generation,
so the newest file of a model is its current (or last) backend's log. This module is the one
owner of that naming: :class:`~.backend.Backend` asks it for its path, the log stream asks it
for the newest file. A file is capped (:mod:`.capped_log`): when its middle is cut it is
replaced by a new file, and :class:`LogFollower` finds its place again in that one.

Secrets never leave through a log: :func:`redact` blanks the given secrets (the live backends'
API keys, the Jupyter token) wherever they appear, and anything that looks like a credential
(``Bearer …``, ``api_key: …``, ``token=…``): llama-server at high verbosity prints the last
characters of its key (``api_keys: ****abcd``), which must not be shown either.

Everything here blocks on the file system; callers on the event loop run it in a thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .capped_log import HEAD_BYTES, CutInfo, cut_info

#: Bytes read from the end of a file to find its last lines (more lines are cut).
TAIL_WINDOW_BYTES = 1 << 20
#: Bytes read per follow step, so that a chatty backend cannot make one step unbounded.
FOLLOW_CHUNK_BYTES = 1 << 20
REDACTED = "[redacted]"
#: Lines redacted in one call (see :func:`redact_lines`).
REDACT_BATCH_LINES = 200
#: An authorization header: everything after it goes (scheme and credentials).
_AUTHORIZATION = re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n]+")
#: Credentials spelled out in a line: the value after the name goes.
_CREDENTIAL = re.compile(
    r"(?i)(\bbearer\s+|\btoken\s+|"
    r"\b(?:api[_-]?keys?|token|access[_-]?token|password|secret)"
    r"[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"'&,;]+")


def file_stem(model: str) -> str:
    """The part of a log file name that names the model (no path separators)."""
    return model.replace("/", "_")


def log_path(log_dir: Path, model: str, generation: int) -> Path:
    """Where the backend of ``model`` with ``generation`` writes its log."""
    return log_dir / f"{file_stem(model)}.{generation}.log"


def latest_log(log_dir: Path, model: str) -> tuple[Path, int] | None:
    """The newest log file of ``model`` and its generation; None if it never started."""
    pattern = re.compile(re.escape(file_stem(model)) + r"\.(\d+)\.log")
    best: tuple[Path, int] | None = None
    try:
        names = os.listdir(log_dir)
    except OSError:
        return None
    for name in names:
        match = pattern.fullmatch(name)
        if match and (best is None or int(match.group(1)) > best[1]):
            best = (log_dir / name, int(match.group(1)))
    return best


def redact(line: str, secrets: Iterable[str]) -> str:
    """``line`` without the ``secrets`` and without anything that looks like a credential."""
    for secret in secrets:
        if secret:
            line = line.replace(secret, REDACTED)
    line = _AUTHORIZATION.sub(lambda m: m.group(1) + REDACTED, line)
    return _CREDENTIAL.sub(lambda m: m.group(1) + REDACTED, line)


def redact_lines(lines: list[str], secrets: Iterable[str]) -> list[str]:
    """:func:`redact` of many lines, :data:`REDACT_BATCH_LINES` at a time.

    One pass over a batch's text instead of one call per line (a 10,000-line tail takes a few
    milliseconds instead of a few hundred), in batches so that no single regular-expression
    call holds the interpreter long: a pattern runs in C without letting other threads in,
    and the event loop waits for it (a whole 1 MiB tail in one call held ``/health`` for
    hundreds of milliseconds). No pattern matches across a line end, so the result is that
    of each line alone.
    """
    secrets = [s for s in secrets if s]
    out: list[str] = []
    for start in range(0, len(lines), REDACT_BATCH_LINES):
        batch = "\n".join(lines[start:start + REDACT_BATCH_LINES])
        out += redact(batch, secrets).split("\n")
    return out


def last_lines(path: Path, count: int) -> tuple[list[str], int]:
    """The last ``count`` complete lines of ``path`` and the offset after them.

    A line still being written (no newline yet) is left for the follower. A missing file has
    no lines (offset 0).
    """
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            start = max(0, end - TAIL_WINDOW_BYTES)
            fh.seek(start)
            data = fh.read(end - start)
    except OSError:
        return [], 0
    complete = data.rfind(b"\n") + 1
    offset = start + complete
    lines = data[:complete].decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first one is cut
    return (lines[-count:] if count > 0 else []), offset


@dataclass
class LogFollower:
    """Follows the newest log file of one model, switching to a newer one when it appears.

    ``path``/``generation``/``offset`` say where reading goes on; only :meth:`step` moves them.
    ``_inode`` and ``_cut`` are those of the file ``offset`` counts in: when the file's middle
    was cut (a new inode), ``offset`` is moved to the same line in the new file, or to the cut
    marker when that line was cut.
    """

    log_dir: Path
    model: str
    path: Path | None = None
    generation: int = 0
    offset: int = 0
    _inode: int | None = field(default=None, repr=False)
    _cut: CutInfo | None = field(default=None, repr=False)

    def start(self, tail: int) -> list[str]:
        """Begin at the newest file: its last ``tail`` lines, then follow from their end."""
        if self.find_newest() is None:
            return []
        assert self.path is not None
        lines, self.offset = last_lines(self.path, tail)
        return lines

    def find_newest(self) -> Path | None:
        """Point at the start of the newest file and return it; None if the model never
        started. Whoever reads its tail elsewhere sets ``offset`` to the end of that tail."""
        found = latest_log(self.log_dir, self.model)
        if found is None:
            return None
        self.path, self.generation = found
        self.offset = 0
        self._inode, self._cut = _identity(self.path)
        return self.path

    def step(self) -> tuple[list[str], int | None, list[str]]:
        """New complete lines since the last step: ``(lines, None, [])``; when the model
        restarted meanwhile, ``(rest of the old file, new generation, new file's lines)``."""
        lines = self._read_new()
        found = latest_log(self.log_dir, self.model)
        if found is None or found[1] <= self.generation:
            return lines, None, []
        self.path, self.generation = found
        self.offset = 0
        self._inode, self._cut = _identity(self.path)
        return lines, self.generation, self._read_new()

    def _read_new(self) -> list[str]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as fh:
                inode = os.fstat(fh.fileno()).st_ino
                if inode != self._inode:  # its middle was cut meanwhile
                    cut = cut_info(fh.read(HEAD_BYTES + 512))
                    self.offset = moved_offset(self.offset, self._cut, cut)
                    self._inode, self._cut = inode, cut
                fh.seek(self.offset)
                data = fh.read(FOLLOW_CHUNK_BYTES)
        except OSError:
            return []
        complete = data.rfind(b"\n") + 1
        if complete == 0 and len(data) < FOLLOW_CHUNK_BYTES:
            return []
        if complete == 0:  # one enormous line: pass it on in pieces
            complete = len(data)
        self.offset += complete
        return data[:complete].decode("utf-8", "replace").splitlines()


def moved_offset(offset: int, before: CutInfo | None, after: CutInfo | None) -> int:
    """Where ``offset`` of a log cut as ``before`` (None: never cut) is in the same log cut as
    ``after``: the same byte if it is still there, else the start of the cut marker."""
    if after is None:
        return offset
    if offset <= after.head_len:
        return offset
    # Bytes after the head, counted from the log's start as if nothing had been cut.
    past_head = (offset - before.marker_end + before.cut) if before else offset - after.head_len
    moved = after.marker_end + past_head - after.cut
    return moved if moved >= after.marker_end else after.head_len


def _identity(path: Path) -> tuple[int | None, CutInfo | None]:
    """The inode of ``path`` and how it was cut (None, None if it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return os.fstat(fh.fileno()).st_ino, cut_info(fh.read(HEAD_BYTES + 512))
    except OSError:
        return None, None
