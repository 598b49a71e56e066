"""The private folder of backend logs: its place and modes, and the removal of the folders of
routers that no longer run (a dead pid, or a pid reused by another process)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import psutil

from lemonade_jupyter.core.log_folder import (
    FOLDER_NAME,
    private_log_dir,
    remove_dead_server_folders,
)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_private_log_dir_is_a_0700_folder_of_its_own_under_the_data_folder(tmp_path):
    first, second = private_log_dir(tmp_path), private_log_dir(tmp_path)
    assert first != second  # two routers of one process do not share a folder
    for folder in (first, second):
        assert folder.parent == tmp_path / FOLDER_NAME
        assert folder.name.startswith(f"{os.getpid()}-")
        assert mode(folder) == 0o700
    assert mode(tmp_path / FOLDER_NAME) == 0o700


def test_a_looser_root_of_ours_is_made_private(tmp_path):
    root = tmp_path / FOLDER_NAME
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    private_log_dir(tmp_path)
    assert mode(root) == 0o700


def test_folders_of_routers_that_no_longer_run_are_removed(tmp_path):
    root = tmp_path / FOLDER_NAME
    root.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = int(psutil.Process(child.pid).create_time() * 1000)
    child.wait(timeout=60)
    me = psutil.Process()
    mine_ms = int(me.create_time() * 1000)
    dead = root / f"{child.pid}-{started}-abcd"
    reused = root / f"{me.pid}-{mine_ms - 5000}-abcd"  # my pid, another start: a reused pid
    alive = root / f"{me.pid}-{mine_ms}-abcd"
    other = root / "not-a-server-folder"
    for folder in (dead, reused, alive, other):
        folder.mkdir()
        (folder / "m.1.log").write_text("x")
    assert sorted(remove_dead_server_folders(root)) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert (alive / "m.1.log").exists() and (other / "m.1.log").exists()
