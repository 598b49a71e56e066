"""Fixtures of the notebook-side tests: an IPython shell, the fake router, the real routers.

Real routers: ``embedded`` (the kernel's own embedded router, on its thread) and
``jupyter_server`` (a ``jupyter server`` subprocess with the extension, in isolated Jupyter
dirs). Both are module-scoped; ``clean_router`` unloads everything after each test so the
session's zombie/orphan check sees no backend left behind.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.kernel.client import RouterClient, embedded_client, shutdown_embedded
from lemonade_jupyter.kernel.magics import LemonadeMagics

from .fake_router import FakeRouter

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    """The IPython shell with ``%load_ext lemonade_jupyter`` done (no discovery env leaks in)."""
    for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "lemonade_jupyter")
    return shell


def use_client(shell: InteractiveShell, client: RouterClient, **traits: Any) -> LemonadeMagics:
    """Register a fresh ``LemonadeMagics`` bound to ``client`` (text progress by default)."""
    traits.setdefault("progress", "text")
    magics = LemonadeMagics(shell, **traits)
    magics.client = client
    shell.register_magics(magics)
    return magics


@pytest.fixture
def fake() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def fake_magics(ip: InteractiveShell, fake: FakeRouter) -> LemonadeMagics:
    return use_client(ip, fake.client())


from _polling import wait_for  # noqa: E402,F401 - re-exported to the kernel tests


def loaded(client: RouterClient) -> dict[str, dict[str, Any]]:
    return {m["model_name"]: m for m in client.health()["all_models_loaded"]}


# -- the embedded router ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded(
    tmp_path_factory: pytest.TempPathFactory, llama_server_path: str
) -> Iterator[RouterClient]:
    """The process's embedded router (the kernel's own code path), in a private data dir."""
    data = tmp_path_factory.mktemp("embedded-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_DATA_DIR", str(data))
        mp.setenv("LEMONADE_LLAMA_SERVER", llama_server_path)
        shutdown_embedded()
        client = embedded_client()
        yield client
        shutdown_embedded()


# -- a real Jupyter server with the extension ------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A Jupyter server (or JupyterLab) subprocess with lemonade_jupyter enabled."""

    def __init__(
        self,
        root: Path,
        *,
        app: str = "jupyter_server",
        llama_server_path: str = "",
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {
            **os.environ,
            "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
            "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_CONFIG_DIR": str(root / "config"),
            "IPYTHONDIR": str(root / "ipython"),
            "LEMONADE_LLAMA_SERVER": llama_server_path,
            **(extra_env or {}),
        }
        for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN", "JPY_PARENT_PID"):
            self.env.pop(var, None)
        (root / "work").mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{app}.log"
        argv = [
            sys.executable,
            "-m",
            app,
            "--no-browser",
            f"--port={self.port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root / 'work'}",
            "--ServerApp.jpserver_extensions={'lemonade_jupyter': True}",
            "--LemonadeApp.max_loaded_models=1",
            *extra_args,
        ]
        if os.geteuid() == 0:  # CI containers run as root
            argv.append("--allow-root")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = RouterClient(self.url, self.token, kind="explicit", source="test")
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                httpx.get(
                    f"{self.url}lemonade/api/v1/health",
                    headers={"Authorization": f"token {self.token}"},
                    timeout=2,
                ).raise_for_status()
                # the info file (for discovery) is written once the server serves
                if any((self.root / "runtime").glob("jpserver-*.json")):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def jupyter_server(
    tmp_path_factory: pytest.TempPathFactory, llama_server_path: str
) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("jupyter"), llama_server_path=llama_server_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_router() -> Iterator[list[RouterClient]]:
    """Append real-router clients to the yielded list; every model is unloaded afterwards."""
    clients: list[RouterClient] = []
    yield clients
    for client in clients:
        client.unload()
        wait_for(lambda c=client: not loaded(c), timeout=30)
