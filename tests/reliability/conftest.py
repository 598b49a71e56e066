"""Fixtures of the reliability suite: Jupyter server subprocesses and model files.

``jupyter_factory(**traits)`` starts a real ``jupyter server`` with lemonade enabled and a private
data dir; every server it started is stopped (SIGTERM, then SIGKILL) before the autouse
zombie/orphan check of ``tests/conftest.py`` runs, and none of its backends may survive that.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.jupyter import JupyterProcess
from tests.helpers.processes import alive, backend_children


@pytest.fixture
def model_files(tmp_path: Path, default_model_file: str) -> Callable[[str], str]:
    """``model_files("a")`` → a distinct path (a symlink) to the default GGUF.

    Distinct paths make each model's backend recognisable by its command line.
    """
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)

    def make(name: str) -> str:
        path = folder / f"{name}.gguf"
        if not path.exists():
            path.symlink_to(default_model_file)
        return str(path)

    return make


@pytest.fixture
def corrupt_gguf(tmp_path: Path) -> str:
    """A file with the GGUF magic and junk after it: pull accepts it, llama-server cannot load it."""
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + os.urandom(4096))
    return str(path)


@pytest.fixture
def jupyter_factory(
    tmp_path: Path, llama_server_path: str
) -> Iterator[Callable[..., JupyterProcess]]:
    servers: list[JupyterProcess] = []
    counter = iter(range(1000))

    def start(root: Path | None = None, *, env: dict[str, str | None] | None = None,
              **traits: Any) -> JupyterProcess:
        traits.setdefault("llama_server_path", llama_server_path)
        traits.setdefault("restore_on_start", False)
        traits.setdefault("sse_ping_interval_s", 0.5)
        server = JupyterProcess(root or tmp_path / f"jupyter{next(counter)}", lemonade=traits,
                                env=env or {})
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        children = backend_children(server.pid) if server.proc and server.proc.poll() is None else []
        server.stop()
        for p in children:
            try:
                p.wait(10)
            except Exception:  # noqa: BLE001 - reported below
                pass
        left = [p.pid for p in children if alive(p.pid)]
        assert not left, f"backends outlived a graceful Jupyter shutdown: {left}"
