"""Helpers for reliability tests: a real ``jupyter server`` subprocess, SSE reading, process checks.

Most reliability tests drive a Jupyter server in a *subprocess* (``jupyter server --allow-root``
with the extension enabled), so that killing it, measuring its memory and walking its routes
with and without credentials all look exactly like production. Its backends are grandchildren
of the test process, so the autouse zombie/orphan check of ``tests/conftest.py`` covers them too.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

API = "lemonade/api/v1"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
JUPYTER = Path(sys.executable).with_name("jupyter")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_artifact(name: str, data: dict[str, Any]) -> Path:
    """Save a test's figures as JSON under ``test-artifacts/`` and print them (``-s``)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"\n[{name}] {json.dumps(data, sort_keys=True)}")
    return path


from _polling import wait_for  # noqa: E402,F401 - re-exported to the reliability tests


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def is_backend(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return "llama-server" in cmd or "fake_llama_server" in cmd


def backend_children(pid: int) -> list[psutil.Process]:
    """Running (non-zombie) backend processes below ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in children:
        try:
            if is_backend(p) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def zombies_below(pid: int) -> list[int]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in children:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_envelope(resp: httpx.Response) -> dict[str, Any]:
    """The body is SPEC §6's error envelope; return its ``error`` object."""
    try:
        data = resp.json()
    except ValueError:
        raise AssertionError(f"not JSON ({resp.status_code}): {resp.content[:300]!r}") from None
    assert isinstance(data, dict), data
    err = data.get("error")
    assert isinstance(err, dict), data
    assert isinstance(err.get("message"), str) and err["message"], data
    assert isinstance(err.get("type"), str) and err["type"], data
    for key in ("code", "param"):
        assert key not in err or err[key] is None or isinstance(err[key], str), data
    assert "Traceback" not in err["message"], data
    return err


@dataclass
class StreamResult:
    """How one streaming request ended, as a client sees it."""

    status: int
    done: bool = False  # saw ``data: [DONE]``
    error: dict[str, Any] | None = None  # an SSE error event, or the JSON error body
    chunks: int = 0
    raw_tail: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None


def read_stream(resp: httpx.Response) -> StreamResult:
    """Consume an SSE answer of the proxy and classify its end."""
    result = StreamResult(resp.status_code)
    if resp.status_code != 200:
        body = resp.read()
        try:
            result.error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            result.error = None
        result.raw_tail = body[-300:]
        return result
    buf = b""
    for chunk in resp.iter_raw():
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            result.raw_tail = (result.raw_tail + event + b"\n\n")[-300:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:]
                if payload == b"[DONE]":
                    result.done = True
                    continue
                try:
                    data = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(data, dict) and "error" in data:
                    result.error = data["error"]
                else:
                    result.chunks += 1
    result.raw_tail += buf[-300:]
    return result


@dataclass
class JupyterServer:
    """A ``jupyter server --allow-root`` subprocess with lemonade enabled and its own dirs."""

    root: Path
    lemonade: dict[str, Any] = field(default_factory=dict)
    env_overrides: dict[str, str | None] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "lemonade-data"

    @property
    def log_path(self) -> Path:
        return self.root / "jupyter-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", httpx.Timeout(120.0, connect=10.0))
        return httpx.Client(base_url=self.url, headers=self.headers(), **kwargs)

    def start(self, timeout: float = 60.0) -> JupyterServer:
        for d in ("config", "data", "runtime", "notebooks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "ServerApp": {
                "jpserver_extensions": {"lemonade_jupyter": True},
                "ip": "127.0.0.1",
                "port": self.port,
                "port_retries": 0,
                "open_browser": False,
                "root_dir": str(self.root / "notebooks"),
            },
            "IdentityProvider": {"token": self.token},
            "LemonadeApp": {"data_dir": str(self.data_dir), **self.lemonade},
        }
        (self.root / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.root / "config"),
            JUPYTER_DATA_DIR=str(self.root / "data"),
            JUPYTER_RUNTIME_DIR=str(self.root / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        env.pop("JUPYTER_TOKEN", None)
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the child's lifetime
        try:
            self.proc = subprocess.Popen(
                [str(JUPYTER), "server", "--allow-root", "--no-browser"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.root,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        with self.client(timeout=5.0) as c:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jupyter server exited:\n{self.log_tail()}")
                try:
                    if c.get(f"{API}/health").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"jupyter server did not start:\n{self.log_tail()}")
                time.sleep(0.1)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a graceful Jupyter shutdown stops every backend), then reap."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.proc.wait()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()

    # -- API shortcuts ---------------------------------------------------------------------
    def health(self, client: httpx.Client) -> dict[str, Any]:
        resp = client.get(f"{API}/health")
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]


def loaded(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["model_name"]: m for m in health["all_models_loaded"]}


def chat_body(model: str, *, stream: bool = False, max_tokens: int = 8,
              prompt: str = "Say hi") -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}


@dataclass
class ProcessWatcher:
    """Remembers every backend pid ever seen below a process (sampled by the caller)."""

    parent: int
    seen: set[int] = field(default_factory=set)

    def sample(self) -> list[psutil.Process]:
        procs = backend_children(self.parent)
        self.seen.update(p.pid for p in procs)
        return procs

    def survivors(self) -> list[int]:
        return [pid for pid in self.seen if alive(pid)]


def iter_sse_events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse ``lemonade/api/v1/events`` into ``{"id", "event", "data"}`` dicts."""
    buf = b""
    for chunk in resp.iter_raw():
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            event: dict[str, Any] = {}
            for line in block.split(b"\n"):
                if line.startswith(b"id: "):
                    event["id"] = int(line[4:])
                elif line.startswith(b"event: "):
                    event["event"] = line[7:].decode()
                elif line.startswith(b"data: "):
                    event["data"] = json.loads(line[6:])
            if "event" in event:
                yield event
