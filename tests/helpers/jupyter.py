"""A real ``jupyter server`` (or JupyterLab) subprocess with lemonade_jupyter, in private dirs.

Tests that need a Jupyter server in its own process (to kill it, measure it, discover it from a
kernel, or walk its routes as a browser would) start one with :class:`JupyterProcess`. The
package under ``lemonade_jupyter/`` may be installed (not editable) in the environment, so the
subprocess gets the repository root first on ``PYTHONPATH``: it runs the work tree's code, like
the test process. Its backends are grandchildren of the test process, so the autouse
zombie/orphan check of ``tests/conftest.py`` covers them too.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lemonade_jupyter.core.ports import free_port
from lemonade_jupyter.kernel.client import RouterClient

from . import REPO
from .http import API, api_client, auth_headers

#: Variables of the test's environment that would leak into the server or its discovery.
LEAKY_ENV = ("JUPYTER_TOKEN", "LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN",
             "LEMONADE_JUPYTER_NODE_URL", "JPY_PARENT_PID")


def repo_first_on_pythonpath(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the repository root first on ``PYTHONPATH`` (what was there is kept)."""
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), *rest])}


@dataclass
class JupyterProcess:
    """``python -m <app>`` with lemonade enabled, its own Jupyter dirs under ``root``, a random
    token and a free port. Configured through ``root/config/jupyter_server_config.json``:
    ``lemonade`` are ``LemonadeApp`` traits, ``server_app`` more ``ServerApp`` traits (such as
    ``base_url``). ``enable_extension=False`` leaves enabling it to the installed
    ``jupyter_server_config.d`` file. ``env`` overrides the environment (None removes a
    variable). With ``sock`` (a short path) the server listens on that unix socket only, and
    :meth:`client` talks through it."""

    root: Path
    lemonade: dict[str, Any] = field(default_factory=dict)
    server_app: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)
    app: str = "jupyter_server"
    extra_args: tuple[str, ...] = ()
    enable_extension: bool = True
    sock: Path | None = None
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _router_client: RouterClient | None = field(default=None, repr=False)

    # -- where things are -------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "lemonade-data"

    @property
    def notebook_dir(self) -> Path:
        return self.root / "work"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "runtime"

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.app}.log"

    @property
    def base_url(self) -> str:
        return str(self.server_app.get("base_url", "/"))

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT{base_url}``, or ``http://localhost{base_url}`` through
        :attr:`sock` (ends with a slash)."""
        if self.sock is not None:
            return f"http://localhost{self.base_url}"
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- clients ------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        return auth_headers(self.token)

    def client(self, **kwargs: Any) -> httpx.Client:
        """A blocking ``httpx`` client with the token, based at :attr:`url`."""
        if self.sock is not None:
            kwargs.setdefault("transport", httpx.HTTPTransport(uds=str(self.sock)))
        return api_client(self.url, self.token, **kwargs)

    @property
    def router_client(self) -> RouterClient:
        """The notebook-side client for this server (closed by :meth:`stop`)."""
        if self._router_client is None:
            through = {} if self.sock is None else {"uds": str(self.sock)}
            self._router_client = RouterClient(self.url, self.token, kind="explicit",
                                               source="test", **through)
        return self._router_client

    def health(self, client: httpx.Client) -> dict[str, Any]:
        resp = client.get(f"{API}/health")
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    # -- life cycle ---------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
        env.update(
            JUPYTER_CONFIG_DIR=str(self.root / "config"),
            JUPYTER_DATA_DIR=str(self.root / "data"),
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            JUPYTER_PLATFORM_DIRS="1",
            IPYTHONDIR=str(self.root / "ipython"),
        )
        env = repo_first_on_pythonpath(env)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def _write_config(self) -> None:
        listen: dict[str, Any] = ({"sock": str(self.sock)} if self.sock is not None else
                                  {"ip": "127.0.0.1", "port": self.port, "port_retries": 0})
        server_app: dict[str, Any] = {
            **listen,
            "open_browser": False,
            "root_dir": str(self.notebook_dir),
            **self.server_app,
        }
        if self.enable_extension:
            server_app["jpserver_extensions"] = {"lemonade_jupyter": True}
        config = {
            "ServerApp": server_app,
            "IdentityProvider": {"token": self.token},
            "LemonadeApp": {"data_dir": str(self.data_dir), **self.lemonade},
        }
        (self.root / "config" / "jupyter_server_config.json").write_text(json.dumps(config))

    def start(self, timeout: float = 90.0) -> JupyterProcess:
        """Start the server and wait until it serves ``/health`` and wrote its info file
        (which kernels' discovery reads)."""
        for d in ("config", "data", "runtime", "work", "ipython"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.sock is None:
            self.port = free_port()
        self._write_config()
        argv = [sys.executable, "-m", self.app, "--no-browser", *self.extra_args]
        if os.geteuid() == 0:  # CI containers run as root
            argv.append("--allow-root")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps its own descriptor
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self._environment(),
                                         cwd=self.root)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        with self.client(timeout=5.0) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.app} exited:\n{self.log_tail()}")
                try:
                    if (c.get(f"{API}/health").status_code == 200
                            and any(self.runtime_dir.glob("jpserver-*.json"))):
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{self.app} did not start:\n{self.log_tail()}")
                time.sleep(0.1)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a graceful Jupyter shutdown stops every backend), then reap; SIGKILL if it
        has not exited after ``timeout`` seconds."""
        if self._router_client is not None:
            self._router_client.close()
            self._router_client = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
