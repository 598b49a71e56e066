"""A real JupyterHub (with its configurable-http-proxy) running the node router as a service.

:class:`HubNode` starts ``python -m jupyterhub`` with ``docs/jupyterhub_config.py`` loaded as it
is, plus only what a test machine needs: the Hub's ``DummyAuthenticator`` with a password,
three users (alice, bob, and admin, who joins the lemonade-admin role), free loopback ports, a
private database, and the service's environment (its own Jupyter dirs, the work tree first on
``PYTHONPATH``, one llama.cpp thread, the fake llama-server). The users' tokens are made through
the Hub's REST API after a login through its form, the way a user makes one on ``/hub/token``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from lemonade_jupyter.core.ports import free_port

from tests.helpers import REPO
from tests.helpers.jupyter import LEAKY_ENV, repo_first_on_pythonpath
from tests.helpers.polling import wait_for

PASSWORD = "lemonade-test-password"
USERS = ("alice", "bob", "admin")
#: How long the Hub, its proxy and the service may take to answer after a start (shared CPUs).
START_DEADLINE_S = 120.0
#: The Hub polls its managed services every 30 s (its Spawner's default): a killed service is
#: back within that, plus its start.
RESTART_DEADLINE_S = 150.0

_CONFIG = """\
# Written by tests/hub_node/hub.py: the documented config, with the test machine's parts.
load_subconfig({docs!r})

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {pid_file!r}
c.JupyterHub.db_url = {db_url!r}
c.JupyterHub.cookie_secret_file = {cookie_file!r}

(service,) = c.JupyterHub.services
service["url"] = "http://127.0.0.1:{service_port}"
service["environment"] = {service_env!r}
(admins,) = [r for r in c.JupyterHub.load_roles if r["name"] == "lemonade-admin"]
admins["users"] = ["admin"]

# The users' own servers: processes of this OS user, in homes of the test's own.
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home_template!r}
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {spawner_args!r}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment["LEMONADE_JUPYTER_NODE_URL"] = {node_url!r}
c.Spawner.environment["LEMONADE_BACKEND_THREADS"] = "1"
c.Spawner.environment["JUPYTER_PLATFORM_DIRS"] = "1"
"""


@dataclass
class HubNode:
    """The Hub, its proxy and the node service, in ``root``; :attr:`url` is the proxy's."""

    root: Path
    lemonade: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.proxy_port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.service_port = free_port()

    # -- where things are -------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def service_url(self) -> str:
        """The node router's base URL through the Hub's proxy (ends with a slash)."""
        return f"{self.url}/services/lemonade/"

    @property
    def service_root(self) -> Path:
        return self.root / "service"

    @property
    def data_dir(self) -> Path:
        return self.service_root / "data" / "lemonade"

    @property
    def log_path(self) -> Path:
        return self.root / "jupyterhub.log"

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- life cycle ---------------------------------------------------------------------------
    def _write_config(self) -> Path:
        config_dir = self.service_root / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        # The test machines run as root, which a Jupyter server refuses unless told.
        server = {"allow_root": True} if os.geteuid() == 0 else {}
        (config_dir / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": server, "LemonadeApp": self.lemonade}))
        service_env = {
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTER_DATA_DIR": str(self.service_root / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.service_root / "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "LEMONADE_BACKEND_THREADS": "1",
            "PYTHONPATH": repo_first_on_pythonpath(dict(os.environ))["PYTHONPATH"],
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(self.service_root),
        }
        text = _CONFIG.format(
            docs=str(REPO / "docs" / "jupyterhub_config.py"), password=PASSWORD,
            users=set(USERS), proxy_port=self.proxy_port, hub_port=self.hub_port,
            proxy_api_port=self.proxy_api_port, pid_file=str(self.root / "proxy.pid"),
            db_url=f"sqlite:///{self.root / 'jupyterhub.sqlite'}",
            cookie_file=str(self.root / "cookie_secret"), service_port=self.service_port,
            service_env=service_env,
            home_template=str(self.root / "homes" / "{username}"),
            singleuser=str(Path(sys.executable).parent / "jupyterhub-singleuser"),
            spawner_args=["--ServerApp.allow_root=True"] if os.geteuid() == 0 else [],
            node_url=self.service_url)
        path = self.root / "jupyterhub_config.py"
        path.write_text(text)
        return path

    def start(self) -> None:
        """Start the Hub and wait until the node service answers a user's token."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env = repo_first_on_pythonpath(env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_for(self._hub_answers, START_DEADLINE_S, what=f"the Hub\n{self.log_tail()}",
                 interval=0.25)
        if not self.tokens:
            self.tokens = {user: self.make_token(user) for user in USERS}
        self.wait_for_service(START_DEADLINE_S)

    def _hub_answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (
            f"the Hub exited\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.url}/hub/api/", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_for_service(self, timeout: float) -> None:
        """Poll the service's ``/health`` through the proxy with admin's token until 200."""
        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                f"the Hub exited\n{self.log_tail()}")
            try:
                resp = self.client("admin").get("lemonade/api/v1/health", timeout=5)
            except httpx.HTTPError:
                return False
            return resp.status_code == 200
        wait_for(answers, timeout, what=f"the node service\n{self.log_tail()}", interval=0.25)

    def stop(self) -> None:
        """Stop the Hub (it stops the service and its proxy); kill what is left after 30 s."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        tree = _tree(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for p in tree:  # the proxy and the service, should the Hub have left them
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(tree, timeout=10)
        # A Hub that exited on its own (a service that failed at start stops it) leaves its
        # proxy behind, in a session of its own: the Hub's pid file names it.
        proxy = _proxy_from_pid_file(self.root / "proxy.pid", self.proxy_api_port)
        if proxy is not None:
            proxy.kill()
            psutil.wait_procs([proxy], timeout=10)

    # -- users ----------------------------------------------------------------------------------
    def make_token(self, user: str, scopes: list[str] | None = None) -> str:
        """A Hub API token of ``user``: log in through the Hub's form, then ``POST
        /hub/api/users/{user}/tokens`` (``scopes``: the Hub's default, all of the user's)."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            http.get("/hub/login")
            xsrf = http.cookies.get("_xsrf", path="/hub/")
            login = http.post("/hub/login", data={"username": user, "password": PASSWORD,
                                                  "_xsrf": xsrf or ""})
            assert login.status_code == 302, (login.status_code, login.text[:500])
            http.get("/hub/token")  # the XSRF token is tied to the new login session
            xsrf = [c.value for c in http.cookies.jar if c.name == "_xsrf"][-1]
            body: dict[str, Any] = {"note": "lemonade tests"}
            if scopes is not None:
                body["scopes"] = scopes
            made = http.post(f"/hub/api/users/{user}/tokens", json=body,
                             headers={"X-XSRFToken": xsrf or ""})
            assert made.status_code == 201, (made.status_code, made.text[:500])
            return str(made.json()["token"])

    def client(self, user: str, token: str | None = None, **kwargs: Any) -> httpx.Client:
        """A client of the node router through the Hub's proxy, as ``user`` (or ``token``)."""
        kwargs.setdefault("timeout", httpx.Timeout(120.0, connect=10.0))
        return httpx.Client(base_url=self.service_url, headers={
            "Authorization": f"token {token or self.tokens[user]}"}, **kwargs)

    # -- the users' own servers -------------------------------------------------------------
    def start_server(self, user: str) -> str:
        """Start ``user``'s own single-user server through the Hub's REST API (the user's
        token) and wait until the Hub says it is ready; its URL through the proxy."""
        with httpx.Client(base_url=self.url, timeout=60, headers={
                "Authorization": f"token {self.tokens[user]}"}) as http:
            resp = http.post(f"/hub/api/users/{user}/server")
            assert resp.status_code in (201, 202, 400), (resp.status_code, resp.text[:500])

            def ready() -> str | None:
                model = http.get(f"/hub/api/users/{user}").json()
                server = (model.get("servers") or {}).get("")
                return str(server["url"]) if server and server.get("ready") else None
            url = wait_for(ready, START_DEADLINE_S, what=f"{user}'s server\n{self.log_tail()}",
                           interval=0.5)
        return f"{self.url}{url}"

    def stop_server(self, user: str) -> None:
        """Stop ``user``'s own server and wait until the Hub says it is gone."""
        with httpx.Client(base_url=self.url, timeout=60, headers={
                "Authorization": f"token {self.tokens[user]}"}) as http:
            resp = http.delete(f"/hub/api/users/{user}/server")
            assert resp.status_code in (202, 204, 400), (resp.status_code, resp.text[:500])
            wait_for(lambda: not (http.get(f"/hub/api/users/{user}").json().get("servers")),
                     60, what=f"{user}'s server to stop", interval=0.5)

    def server_process(self, user: str) -> psutil.Process:
        """``user``'s single-user server's process, a child of the Hub."""
        assert self.proc is not None

        def find() -> psutil.Process | None:
            for p in _tree(self.proc.pid):  # type: ignore[union-attr]
                try:
                    cmd = p.cmdline()
                    if (any("jupyterhub-singleuser" in a for a in cmd)
                            and p.environ().get("JUPYTERHUB_USER") == user):
                        return p
                except psutil.Error:
                    continue
            return None
        return wait_for(find, 30, what=f"{user}'s server process")  # type: ignore[no-any-return]

    def service_process(self) -> psutil.Process:
        """The node service's process (``lemonade-jupyter node``), a child of the Hub."""
        assert self.proc is not None

        def find() -> psutil.Process | None:
            for p in _tree(self.proc.pid):  # type: ignore[union-attr]
                try:
                    if "node" in p.cmdline() and any("lemonade-jupyter" in a
                                                     for a in p.cmdline()):
                        return p
                except psutil.Error:
                    continue
            return None
        return wait_for(find, 30, what="the node service's process")  # type: ignore[no-any-return]


def _proxy_from_pid_file(path: Path, api_port: int) -> psutil.Process | None:
    """The proxy the pid file names, if it still runs and is ours (its API port)."""
    try:
        proc = psutil.Process(int(path.read_text().strip()))
        cmd = proc.cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    mine = any("configurable-http-proxy" in a for a in cmd) and str(api_port) in cmd
    return proc if mine else None


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
