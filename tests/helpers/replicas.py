"""Real ``llama-server`` processes started by a test outside the router: stand-ins for the
replicas of a remote serving engine (vLLM, KServe...), each with its own API key.

A replica keeps its port across :meth:`ReplicaServer.kill` and :meth:`ReplicaServer.start`, so
the URL registered with the router stays valid when a test restarts it. It runs the default
model under the alias :data:`ALIAS` (what its ``/v1/models`` lists, and the ``model`` of its
answers), with the same command line the router would use.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx

from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.engines.llamacpp import LlamaCppEngine
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.ports import free_port
from lemonade_jupyter.core.settings import RouterSettings

ALIAS = "smol-remote"


class ReplicaServer:
    """One ``llama-server`` on a fixed loopback port with its own key."""

    def __init__(self, binary: str, model_file: str, log_dir: Path) -> None:
        self.api_key = "sk-replica-" + secrets.token_hex(16)
        self.port = free_port()
        self._engine = LlamaCppEngine(binary, threads=RouterSettings().backend_threads)
        self._spec = ModelSpec(name="replica", checkpoint=model_file)
        self._log = log_dir / f"replica-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI ``/v1`` root, as it is registered with ``/pull``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def spawn(self) -> ReplicaServer:
        argv = [*self._engine.argv(self._spec, LoadOptions(), port=self.port),
                "--alias", ALIAS]
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         env=self._engine.env(self.api_key),
                                         start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 120.0) -> ReplicaServer:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"replica exited: {self._log.read_text()[-2000:]}")
                try:
                    if client.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica not ready: {self._log.read_text()[-2000:]}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL and reap (a replica that dies, as a node would)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.proc = None


def start_replicas(binary: str, model_file: str, log_dir: Path, n: int = 2,
                   ) -> list[ReplicaServer]:
    """``n`` replicas, started side by side and ready."""
    replicas = [ReplicaServer(binary, model_file, log_dir).spawn() for _ in range(n)]
    try:
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.kill()
        raise
    return replicas
