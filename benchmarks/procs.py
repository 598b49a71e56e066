"""The processes a benchmark drives: a bare ``llama-server`` and a real Jupyter server.

A bare server is started with exactly the router's command line (``LlamaCppEngine.argv``: same
file, same flags) and the same way of passing the API key (``$LLAMA_API_KEY``), so the only
difference between "direct" and "through the router" is the router. The Jupyter server is the
real one (``python -m jupyter_server``) with the extension enabled, in a private set of
Jupyter directories, so nothing of the user's configuration or state is read or written.

Every process is started in its own session and stopped with SIGTERM to the group, then SIGKILL;
:func:`leftovers` finds backends that outlived their server (a broken run).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from lemonade_jupyter.api_paths import ROUTE_PREFIX
from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.engines.llamacpp import LlamaCppEngine
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.ports import free_port
from lemonade_jupyter.core.settings import RouterSettings

#: The readiness poll of the bare baseline (the brief: "poll fast, e.g. every 5 ms").
BARE_POLL_S = 0.005
REPO = Path(__file__).resolve().parent.parent


class BenchmarkError(RuntimeError):
    """Something the benchmark relies on is broken (not a missed target)."""


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants; 0 when the process is gone."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return 0
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return int(total)
    except psutil.Error:
        return 0


def cpu_s(pid: int) -> float:
    """CPU seconds ``pid`` has used so far (all its threads, not its children).

    From the scheduler's nanosecond counters (``/proc/PID/task/*/schedstat``) where the kernel
    has them, since psutil's figures tick in 10 ms steps; psutil otherwise.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        if total:
            return total / 1e9
    except OSError:
        pass
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _die_with_us() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the benchmark dies (even by SIGKILL),
    so an interrupted run leaves no server behind; the router's backends die with the server."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl, getppid, parent = libc.prctl, os.getppid, os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if getppid() != parent:
            os._exit(1)

    return preexec


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class BareLlama:
    """One ``llama-server`` started by hand, with the router's argv and env."""

    def __init__(
        self, binary: str, model_file: str, log_dir: Path, *, sleep_idle_seconds: int | None = None
    ) -> None:
        self.api_key = secrets.token_urlsafe(24)
        self._engine = LlamaCppEngine(binary, threads=RouterSettings().backend_threads)
        self._spec = ModelSpec(name="bare", checkpoint=model_file)
        self._sleep = sleep_idle_seconds
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchmarkError("bare llama-server is not running")
        return self._proc.pid

    def argv(self) -> list[str]:
        return self._engine.argv(self._spec, LoadOptions(), port=self.port,
                                 sleep_idle_seconds=self._sleep)

    def spawn(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`)."""
        if self._proc is not None:
            raise BenchmarkError("bare llama-server already running")
        self.port = free_port()
        self.starts += 1
        log = open(self._log_dir / f"bare-{self.port}-{self.starts}.log", "wb")  # noqa: SIM115
        with log:
            self._proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._engine.env(self.api_key), start_new_session=True,
                preexec_fn=_die_with_us(),
            )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Poll ``/health`` every 5 ms (fresh connections) until 200; raise if it exits."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        url = self.url + "/health"
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise BenchmarkError(
                        f"bare llama-server exited with {self._proc.returncode} while loading")
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchmarkError("bare llama-server not ready in time")
                time.sleep(BARE_POLL_S)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the group, wait for the exit (SIGKILL after ``grace_s``)."""
        if self._proc is not None:
            _stop_group(self._proc, grace_s)
            self._proc = None


class JupyterServer:
    """A real ``jupyter server`` with lemonade_jupyter, on a free port, token auth."""

    def __init__(self, workdir: Path, traits: dict[str, Any], name: str = "jupyter") -> None:
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        self.workdir = workdir
        self.data_dir = workdir / "lemonade-data"
        self._traits = traits
        self._name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def api(self, path: str) -> str:
        return f"{self.url}{ROUTE_PREFIX}{path}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}", "Content-Type": "application/json"}

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser",
            f"--port={self.port}", "--ServerApp.port_retries=0", "--ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.workdir}",
            "--ServerApp.jpserver_extensions={'lemonade_jupyter': True}",
            f"--LemonadeApp.data_dir={self.data_dir}",
        ]
        args += [f"--LemonadeApp.{k}={v}" for k, v in self._traits.items()]
        return args

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the server and wait until the lemonade API answers."""
        for sub in ("runtime", "config", "data"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
            "JUPYTER_CONFIG_DIR": str(self.workdir / "config"),
            "JUPYTER_DATA_DIR": str(self.workdir / "data"),
            "JUPYTER_PLATFORM_DIRS": "1",
            # The package of this work tree, not a copy installed in the environment earlier:
            # the server runs from a temporary folder, where an installed copy would win.
            "PYTHONPATH": os.pathsep.join(
                [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
        })
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, cwd=self.workdir,
                preexec_fn=_die_with_us(),
            )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise BenchmarkError(
                        f"{self._name} exited with {self._proc.returncode}; see {self.log_path}:\n"
                        + self.log_tail())
                try:
                    r = client.get(self.api("api/v1/health"), headers=self.headers)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"{self._name} did not answer in time:\n"
                                         + self.log_tail())
                time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def backend_pids(self) -> list[int]:
        pids = []
        for p in psutil.Process(self.pid).children(recursive=True):
            try:
                if "llama" in " ".join(p.cmdline()):
                    pids.append(p.pid)
            except psutil.Error:
                pass
        return pids

    def stop(self, grace_s: float = 30.0) -> list[int]:
        """Shut down cleanly (``/api/shutdown``), then make sure; return backends left over."""
        if self._proc is None:
            return []
        backends = []
        try:
            backends = self.backend_pids()
        except psutil.Error:
            pass
        if self._proc.poll() is None:
            try:
                httpx.post(self.url + "api/shutdown", headers=self.headers, timeout=10)
                self._proc.wait(grace_s)
            except (httpx.HTTPError, subprocess.TimeoutExpired):
                pass
        _stop_group(self._proc, 5.0)
        self._proc = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(is_running(p) for p in backends):
            time.sleep(0.05)
        left = [p for p in backends if is_running(p)]
        for pid in left:  # never leave a backend behind, even when reporting it as a failure
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return left


def backend_api_key(pid: int) -> str | None:
    """The API key of a backend the router started, from its environment (same user only).

    Used for the control measurement "direct to the router's own backend" and to read its
    ``/slots``; None where ``/proc/PID/environ`` cannot be read.
    """
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(b"LLAMA_API_KEY="):
            return item.split(b"=", 1)[1].decode()
    return None


class Relay:
    """``benchmarks.relay`` in a child process, relaying a free port to ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self._upstream = upstream_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.relay", str(self.port), str(self._upstream)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_us(),
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._proc.stdout is not None
        if b"listening" not in self._proc.stdout.readline():
            raise BenchmarkError("the byte relay did not start")

    def stop(self) -> None:
        if self._proc is not None:
            _stop_group(self._proc, 5.0)
            self._proc = None


class FastUpstream:
    """``benchmarks.fast_upstream`` in a child process of its own (the baseline of section 7).

    :meth:`launcher` writes the script a router runs in place of ``llama-server``, so the
    router's backends are the same program, started the router's way.
    """

    def __init__(self, log_dir: Path, model: str = "/models/fast-upstream.gguf") -> None:
        self.api_key = secrets.token_urlsafe(24)
        self.port = free_port()
        self._model = model
        self._log = log_dir / f"fast-upstream-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchmarkError("the fast upstream is not running")
        return self._proc.pid

    @staticmethod
    def launcher(folder: Path) -> str:
        """An executable that runs the stand-in with this interpreter (for a router)."""
        path = folder / "fast-upstream-server"
        path.write_text("#!/bin/sh\n"
                        f"exec {shlex.quote(sys.executable)} "
                        f"{shlex.quote(str(REPO / 'benchmarks' / 'fast_upstream.py'))} \"$@\"\n")
        path.chmod(0o755)
        return str(path)

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, str(REPO / "benchmarks" / "fast_upstream.py"),
                 "--port", str(self.port), "--model", self._model],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "LLAMA_API_KEY": self.api_key}, start_new_session=True,
                preexec_fn=_die_with_us(),
            )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self._proc.poll() is not None:
                    raise BenchmarkError(f"the fast upstream exited: {self._log.read_text()}")
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchmarkError("the fast upstream did not start in time")
                time.sleep(0.02)

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/stats", headers=self.headers,  # type: ignore[no-any-return]
                         timeout=5).json()

    def stop(self) -> None:
        if self._proc is not None:
            _stop_group(self._proc, 5.0)
            self._proc = None
