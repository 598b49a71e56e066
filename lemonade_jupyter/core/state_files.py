"""Atomic JSON state files that survive crashes and tolerate corruption.

A state file is written to a temporary file in the same directory, fsynced and renamed over
the old one, so a reader sees either the old or the new content, never half of it. A file that
cannot be parsed at start is moved aside (``NAME.corrupt-<time>``) with a warning rather than
stopping the server: losing a pin list is bad, refusing to start is worse.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json_or_quarantine(path: Path, expected: type) -> Any | None:
    """Read a JSON state file; a missing file gives None, a corrupt one is moved aside.

    ``expected`` is the type of the top-level value (``dict`` or ``list``); anything else
    counts as corrupt.
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:  # binary junk used to stop the server's start
        _quarantine(path, f"unreadable ({exc})")
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        _quarantine(path, f"not valid JSON ({exc})")
        return None
    if not isinstance(data, expected):
        _quarantine(path, f"top level is {type(data).__name__}, expected {expected.__name__}")
        return None
    return data


def _quarantine(path: Path, why: str) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    try:
        os.replace(path, aside)
        log.warning("State file %s is %s; moved aside to %s", path, why, aside)
    except OSError as exc:  # pragma: no cover - e.g. read-only data dir
        log.warning("State file %s is %s and could not be moved aside: %s", path, why, exc)
