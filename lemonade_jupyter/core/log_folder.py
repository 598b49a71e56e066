"""The private folder of a router's backend logs, and the removal of dead servers' folders.

Backend logs show prompts at high verbosity and used to lie world-readable in the shared
system temp folder, where they outlived a ``kill -9`` of the server. Now they live under the
router's data folder (``<data_dir>/backend-logs``, mode ``0700``), one folder per router
(``<pid>-<start time in ms>-<random>``, mode ``0700``; the files in it are ``0600``, see
:mod:`.capped_log`). A router removes its own folder when it stops cleanly; when it starts it
removes the folders of routers that no longer run: no process with that pid, or one that
started at another time (the pid was reused). A router without a data folder uses a private
folder of the user's in the system temp folder, after checking that nobody else owns it.

Everything here blocks on the file system; it runs once, while the router is being built and
before it serves any request.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

FOLDER_NAME = "backend-logs"
_SERVER_FOLDER = re.compile(r"(\d+)-(\d+)-[0-9a-f]+")


def private_log_dir(data_dir: Path | None) -> Path:
    """Create and return a new private folder for this router's backend logs, after removing
    the folders of dead routers beside it."""
    root = _private_root(data_dir)
    remove_dead_server_folders(root)
    me = psutil.Process()
    folder = root / f"{me.pid}-{_start_ms(me)}-{secrets.token_hex(4)}"
    folder.mkdir(mode=0o700)
    return folder


def remove_dead_server_folders(root: Path) -> list[Path]:
    """Remove every folder of ``root`` whose router no longer runs; return them."""
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _SERVER_FOLDER.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if _runs(int(match.group(1)), int(match.group(2))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    if removed:
        log.info("Removed the backend logs of %d stopped server(s) in %s", len(removed), root)
    return removed


def _runs(pid: int, start_ms: int) -> bool:
    """Whether the process ``pid`` that started at ``start_ms`` still runs."""
    try:
        return _start_ms(psutil.Process(pid)) == start_ms
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # cannot tell (another user's): keep its logs
        return True


def _start_ms(process: psutil.Process) -> int:
    return int(process.create_time() * 1000)


def _private_root(data_dir: Path | None) -> Path:
    """``<data_dir>/backend-logs`` (or the user's folder in the temp folder), ``0700``."""
    if data_dir is not None:
        root = Path(data_dir) / FOLDER_NAME
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _is_private_dir(root) or _make_private(root):
            return root
        raise PermissionError(f"{root} is not a folder of this user's")
    root = Path(tempfile.gettempdir()) / f"lemonade-{FOLDER_NAME}-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        pass
    if _is_private_dir(root) or _make_private(root):
        return root
    # Someone else holds the name: a fresh private folder (it is not cleaned after a kill -9).
    return Path(tempfile.mkdtemp(prefix=f"lemonade-{FOLDER_NAME}-"))


def _is_private_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and stat.S_IMODE(st.st_mode) == 0o700)


def _make_private(path: Path) -> bool:
    """Tighten a folder of ours that was created looser (an older version, a umask)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        os.chmod(path, 0o700)
    except OSError:
        return False
    return _is_private_dir(path)
