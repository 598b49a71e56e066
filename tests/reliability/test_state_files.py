"""State files: atomic writes, and a corrupt or unreadable file at start is moved
aside with a warning while the server starts and keeps everything else."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL, Catalog
from lemonade_jupyter.core.router import Router
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.core.state_files import write_json_atomic

from tests.helpers.artifacts import write_artifact
from tests.helpers.http import API, loaded
from tests.helpers.polling import wait_for

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lemonade_jupyter.core.state_files import write_json_atomic
    path = Path(sys.argv[1])
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        # big enough that a write takes several syscalls
        write_json_atomic(path, {"generation": i, "pins": {f"user.m{j}": True for j in range(2000)}})
""")

CORRUPTIONS = {
    "truncated": b'{"pins": {"user.a": tr',
    "binary": b"\xff\xfe\x00GGUF\x80\x81 not utf-8 \xc3\x28",
    "wrong-type": b'"just a string"',
    "empty": b"",
}


def _corrupt(path: Path, how: str) -> None:
    if how == "directory":
        path.mkdir()
        (path / "inside").write_text("x")
    else:
        path.write_bytes(CORRUPTIONS[how])


def test_state_file_write_is_atomic_under_sigkill(tmp_path):
    """A writer SIGKILLed at random points never leaves a half-written state file."""
    path = tmp_path / "router_state.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(7)
    kills = 0
    generations = []
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.01, 0.25))
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        finally:
            proc.wait()
        if path.exists():
            data = json.loads(path.read_text())  # never partial: it parses, and it is whole
            assert len(data["pins"]) == 2000
            generations.append(data["generation"])
    assert generations, "the writer never completed a write"
    write_artifact("state_file_atomicity.json", {"sigkills": kills, "generations": generations})


def test_state_file_reader_never_sees_a_partial_write(tmp_path):
    path = tmp_path / "user_models.json"
    write_json_atomic(path, [])
    stop = threading.Event()
    errors: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                errors.append(str(exc))
                return
            assert isinstance(data, list)
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            write_json_atomic(path, [{"model_name": f"user.m{j}"} for j in range(i % 50)])
    finally:
        stop.set()
        thread.join()
    assert not errors and reads > 0


@pytest.mark.parametrize("how", ["truncated", "binary", "wrong-type", "empty", "directory"])
async def test_corrupt_router_state_is_moved_aside_and_user_models_kept(tmp_path, caplog, how,
                                                                        default_model_file):
    data = tmp_path / "data"
    data.mkdir()
    write_json_atomic(data / "user_models.json", [
        {"model_name": "user.kept", "checkpoint": default_model_file, "recipe": "llamacpp",
         "labels": ["llm"]}])
    _corrupt(data / "router_state.json", how)
    caplog.set_level(logging.WARNING)
    router = Router(Catalog(data), RouterSettings(), data_dir=data, log_dir=tmp_path / "logs")
    await router.start()
    try:
        assert "user.kept" in router.catalog
        assert router.live_models() == []
        await router.update_settings({"max_loaded_models": 3})  # a fresh file is written
    finally:
        await router.stop()
    aside = list(data.glob("router_state.json.corrupt-*"))
    assert len(aside) == 1, os.listdir(data)
    assert "router_state.json" in caplog.text and "moved aside" in caplog.text
    assert json.loads((data / "router_state.json").read_text())["settings"]["max_loaded_models"] == 3


@pytest.mark.parametrize("how", ["truncated", "binary", "wrong-type", "directory", "bad-entries"])
async def test_corrupt_user_models_is_moved_aside_and_pins_kept(tmp_path, caplog, how,
                                                                default_model_file):
    data = tmp_path / "data"
    data.mkdir()
    write_json_atomic(data / "router_state.json", {
        "pins": {DEFAULT_MODEL: True}, "loaded": [],
        "settings": {"max_loaded_models": 2, "auto_evict": False,
                     "auto_evict_threshold_pct": 0.9, "restore_on_start": False}})
    if how == "bad-entries":
        # Valid JSON, but some entries are junk: they are skipped, the good one is kept.
        write_json_atomic(data / "user_models.json", [
            {"model_name": "user.good", "checkpoint": default_model_file, "labels": ["llm"]},
            {"model_name": "user.badlabels", "checkpoint": default_model_file, "labels": 5},
            {"model_name": "user.badckpt", "checkpoint": {"x": 1}},
            {"model_name": 12}, "junk", None,
        ])
    else:
        _corrupt(data / "user_models.json", how)
    caplog.set_level(logging.WARNING)
    router = Router(Catalog(data), RouterSettings(), data_dir=data, log_dir=tmp_path / "logs")
    await router.start()
    try:
        assert router.remembered_pin(DEFAULT_MODEL)
        assert router.settings.max_loaded_models == 2
        assert DEFAULT_MODEL in router.catalog
        if how == "bad-entries":
            assert "user.good" in router.catalog
            assert "user.badlabels" not in router.catalog
            assert "user.badckpt" not in router.catalog
    finally:
        await router.stop()
    if how != "bad-entries":
        aside = list(data.glob("user_models.json.corrupt-*"))
        assert len(aside) == 1, os.listdir(data)
        assert "user_models.json" in caplog.text and "moved aside" in caplog.text


def test_jupyter_server_starts_with_corrupt_state_files(jupyter_factory, tmp_path,
                                                       default_model_file):
    """Through a real server: a corrupt state file never stops it, and the other file's
    content (a user model; a pin with restore-on-start) is all there."""
    root = tmp_path / "srv-a"
    data = root / "lemonade-data"
    data.mkdir(parents=True)
    write_json_atomic(data / "user_models.json", [
        {"model_name": "user.kept", "checkpoint": default_model_file, "labels": ["llm"]}])
    _corrupt(data / "router_state.json", "binary")
    server = jupyter_factory(root)
    with server.client() as c:
        ids = [m["id"] for m in c.get(f"{API}/models").json()["data"]]
        assert "user.kept" in ids
    server.stop()
    assert "moved aside" in server.log_text()
    assert list(data.glob("router_state.json.corrupt-*"))

    root = tmp_path / "srv-b"
    data = root / "lemonade-data"
    data.mkdir(parents=True)
    write_json_atomic(data / "router_state.json", {
        "pins": {DEFAULT_MODEL: True}, "loaded": [DEFAULT_MODEL], "settings": {}})
    _corrupt(data / "user_models.json", "truncated")
    server = jupyter_factory(root, restore_on_start=True)
    with server.client() as c:
        entry = wait_for(lambda: loaded(server.health(c)).get(DEFAULT_MODEL), 60,
                         "the pinned model to be restored")
        assert entry["pinned"] is True
        c.post(f"{API}/unload", json={})
    server.stop()
    assert "moved aside" in server.log_text()
    assert list(data.glob("user_models.json.corrupt-*"))
