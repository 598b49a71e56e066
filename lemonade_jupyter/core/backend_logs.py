"""Backend log files: where each one lives, reading their last lines, following them, redacting.

Every start of a backend writes what ``llama-server`` prints to its own file in the launcher's
log folder, ``<model>.<generation>.log``; a reload starts a new file with a higher generation,
so the newest file of a model is its current (or last) backend's log. This module is the one
owner of that naming: :class:`~.backend.Backend` asks it for its path, the log stream asks it
for the newest file.

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
from dataclasses import dataclass
from pathlib import Path

#: Bytes read from the end of a file to find its last lines (more lines are cut).
TAIL_WINDOW_BYTES = 1 << 20
#: Bytes read per follow step, so that a chatty backend cannot make one step unbounded.
FOLLOW_CHUNK_BYTES = 1 << 20
REDACTED = "[redacted]"
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
    """

    log_dir: Path
    model: str
    path: Path | None = None
    generation: int = 0
    offset: int = 0

    def start(self, tail: int) -> list[str]:
        """Begin at the newest file: its last ``tail`` lines, then follow from their end."""
        found = latest_log(self.log_dir, self.model)
        if found is None:
            return []
        self.path, self.generation = found
        lines, self.offset = last_lines(self.path, tail)
        return lines

    def step(self) -> tuple[list[str], int | None, list[str]]:
        """New complete lines since the last step: ``(lines, None, [])``; when the model
        restarted meanwhile, ``(rest of the old file, new generation, new file's lines)``."""
        lines = self._read_new()
        found = latest_log(self.log_dir, self.model)
        if found is None or found[1] <= self.generation:
            return lines, None, []
        self.path, self.generation = found
        self.offset = 0
        return lines, self.generation, self._read_new()

    def _read_new(self) -> list[str]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as fh:
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
