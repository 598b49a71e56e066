"""One backend process (``llama-server``, or a whisper-server for transcription models)
serving one model on a loopback port.

A :class:`Backend` is started once and stopped once; a reload makes a new one (with a new
``generation``), which is how the router tells "the backend that just failed" from "the one
that replaced it" when several requests report the same crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import httpx

from ..errors import ModelLoadError
from . import process
from .backend_logs import log_path
from .capped_log import LogPump
from .catalog import ModelSpec
from .engines.llamacpp import LOOPBACK
from .options import LoadOptions
from .ports import free_port

log = logging.getLogger(__name__)
_generations = itertools.count(1)


class _PortTaken(ModelLoadError):
    """Another process answers on the port this backend was given: retry on a new port."""


class EngineCommand(Protocol):
    """What a backend asks of its engine: the command line and the environment (the key
    travels there). :class:`.engines.llamacpp.LlamaCppEngine` and
    :class:`.engines.whispercpp.WhisperCppEngine` are the two."""

    def argv(self, spec: ModelSpec, options: LoadOptions, *, port: int,
             sleep_idle_seconds: int | None = None) -> list[str]: ...

    def env(self, api_key: str) -> dict[str, str]: ...

    @property
    def process_name(self) -> str:
        """What the process is called in messages (``llama-server``, ``whisper-server``)."""


class BackendState(enum.Enum):
    """Lifecycle of one process; only :meth:`Backend._set_state` writes it."""

    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


def _total_slots(props: httpx.Response) -> int | None:
    """``total_slots`` of a ``/props`` answer, if it is a positive integer."""
    try:
        value = props.json().get("total_slots")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class Backend:
    """A ``llama-server`` child: spawn, readiness probe, stop, exit notification.

    Owned by the router's event loop. ``exited`` resolves with the return code when the
    process ends for any reason; ``stop()`` is idempotent.
    """

    def __init__(
        self,
        engine: EngineCommand,
        spec: ModelSpec,
        options: LoadOptions,
        *,
        http: httpx.AsyncClient,
        log_dir: Path,
        ready_timeout_s: float = 120.0,
        stop_grace_s: float = 5.0,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        max_log_bytes: int = 64 << 20,
    ) -> None:
        self.spec = spec
        self.options = options
        self.generation = next(_generations)
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.state = BackendState.NEW
        self.started_at = 0.0
        self.load_duration_ms = 0.0
        self._engine = engine
        self._http = http
        self._log_path = log_path(log_dir, spec.name, self.generation)
        self._max_log_bytes = max_log_bytes
        self._log_pump: LogPump | None = None
        self._ready_timeout_s = ready_timeout_s
        self._stop_grace_s = stop_grace_s
        self._proc: asyncio.subprocess.Process | None = None
        self._reaper: asyncio.Task[int] | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._stop_requested = False
        self._extra_args = list(extra_args)
        self._extra_env = dict(extra_env or {})
        #: Set by the router once a request was answered: its death is then not a crash loop.
        self.served = False
        #: Bytes per device that the engine reported for its buffers at load ("gpu0", "host").
        self.buffer_report: dict[str, int] = {}
        #: The parallel slots the engine says it serves (``/props`` ``total_slots``), read
        #: once at readiness; None when it did not say.
        self.total_slots: int | None = None

    # -- read-only views ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for clients that pool connections per backend."""
        return LOOPBACK, self.port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def stop_requested(self) -> bool:
        """True once the router asked this backend to stop (an exit is then not a crash)."""
        return self._stop_requested

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_head(self, max_bytes: int = 262144) -> str:
        """The start of the backend's log: what it printed while loading."""
        try:
            with open(self._log_path, "rb") as fh:
                return fh.read(max_bytes).decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 12) -> str:
        """The last lines the backend printed, for error messages."""
        try:
            with open(self._log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------
    def _set_state(self, state: BackendState) -> None:
        self.state = state

    async def start(self) -> None:
        """Spawn the process and return once ``GET /health`` answers 200.

        Retries on a fresh port when the chosen one was taken meanwhile. Raises ModelLoadError
        with the engine's own last words when the process exits or does not get ready in time.
        """
        if self.state is not BackendState.NEW:
            raise RuntimeError("A Backend is started once; make a new one to reload")
        self._set_state(BackendState.STARTING)
        started = time.monotonic()
        self.started_at = time.time()
        for attempt in range(3):
            self.port = free_port()
            argv = self._engine.argv(self.spec, self.options, port=self.port) + self._extra_args
            spawning = asyncio.ensure_future(process.spawn_logged(
                argv, env={**self._engine.env(self.api_key), **self._extra_env},
                log_path=self._log_path, max_log_bytes=self._max_log_bytes))
            try:
                self._proc, self._log_pump = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                # Cancelled (Router.stop) while the child was being created: finish the
                # spawn so that stop() knows the process and reaps it; losing it here
                # left a backend running after the router had stopped.
                with contextlib.suppress(Exception):
                    self._proc, self._log_pump = await spawning
                raise
            self._reaper = asyncio.ensure_future(self._proc.wait())
            try:
                await self._wait_ready(started + self._ready_timeout_s)
            except ModelLoadError as exc:
                await self._kill_quietly()
                await self.flush_log()  # the next attempt appends to the same file
                if attempt < 2 and (isinstance(exc, _PortTaken)
                                    or "bind" in self.log_tail(6).lower()):
                    log.info("Port %s was taken; retrying %s", self.port, self.spec.name)
                    continue
                self._set_state(BackendState.STOPPED)
                self._resolve_exit()
                raise
            break
        self.load_duration_ms = (time.monotonic() - started) * 1000
        self._set_state(BackendState.READY)
        assert self._reaper is not None
        self._reaper.add_done_callback(lambda _t: self._resolve_exit())

    async def _wait_ready(self, deadline: float) -> None:
        """Poll ``/health`` with a short, growing interval; fail fast when the child exits."""
        assert self._proc is not None and self._reaper is not None
        delay = 0.005
        url = f"{self.url}/health"
        while True:
            if self._reaper.done():
                await self.flush_log()
                raise ModelLoadError(
                    f"{self._engine.process_name} for '{self.spec.name}' exited with code "
                    f"{self._proc.returncode} while loading: {self._reason()}"
                )
            try:
                resp = await self._http.get(url, timeout=2.0)
                if resp.status_code == 200:
                    # /health is public, so check that the server on this port is ours (it
                    # takes our key). Two backends starting at once can be handed the same
                    # free port; the one that lost the bind race used to see the winner's
                    # /health, take the port for its own and send its model's requests to
                    # another model (401 "Invalid API Key"; tests/reliability concurrency run).
                    own = await self._http.get(f"{self.url}/props", headers=self.auth_headers(),
                                               timeout=2.0)
                    if own.status_code == 401:
                        raise _PortTaken(f"port {self.port} is served by another process")
                    self.total_slots = _total_slots(own)
                    return
            except httpx.HTTPError:
                pass
            now = time.monotonic()
            if now >= deadline:
                await self.flush_log()
                raise ModelLoadError(
                    f"{self._engine.process_name} for '{self.spec.name}' was not ready after "
                    f"{self._ready_timeout_s:.0f} s: {self._reason()}"
                )
            # Wake early if the process exits; never sleep past the deadline.
            await asyncio.wait({self._reaper}, timeout=min(delay, deadline - now))
            # Capped at 10 ms: a 100 ms cap made loads ~50 ms slower than a bare start
            # (benchmarks section 3); a loopback GET every 10 ms costs next to nothing.
            delay = min(delay * 1.6, 0.01)

    async def flush_log(self, timeout_s: float = 2.0) -> None:
        """Wait until what the engine printed so far is in its log file (the output goes
        through a pipe and a thread, :mod:`.capped_log`): all of it once the process ended.
        Waits in a worker thread, at most ``timeout_s``."""
        pump = self._log_pump
        if pump is None:
            return
        if self._proc is not None and self._proc.returncode is not None:
            await asyncio.to_thread(pump.join, timeout_s)
        else:
            await asyncio.to_thread(pump.wait_caught_up, timeout_s)

    def _reason(self) -> str:
        tail = self.log_tail(8)
        interesting = [
            ln for ln in tail.splitlines()
            if any(w in ln.lower() for w in ("error", "fail", "invalid", "unable", "cannot"))
        ]
        return ("\n".join(interesting[-3:]) or tail or "no output").strip()

    async def _kill_quietly(self) -> None:
        if self._proc is not None:
            await process.terminate(self._proc, 0.5)

    def _resolve_exit(self) -> None:
        if not self.exited.done():
            code = self._proc.returncode if self._proc else -1
            self.exited.set_result(code if code is not None else -1)
        if self.state is not BackendState.STOPPING:
            self._set_state(BackendState.STOPPED)

    async def stop(self) -> None:
        """Stop the process (SIGTERM to its group, SIGKILL after the grace) and reap it."""
        self._stop_requested = True
        if self._proc is None or self.state is BackendState.STOPPED and self.exited.done():
            self._set_state(BackendState.STOPPED)
            self._resolve_exit()
            return
        self._set_state(BackendState.STOPPING)
        await process.terminate(self._proc, self._stop_grace_s)
        self._set_state(BackendState.STOPPED)
        self._resolve_exit()

    async def probe(self, timeout_s: float) -> bool:
        """One liveness check: True when ``/health`` answers (any status) within the timeout.

        A transport error is retried once at once: the pool may hand the probe a keep-alive
        connection the backend has just closed (llama-server closes them after a stream, and
        when idle for 5 s). Counted as failed probes, those made the watchdog kill busy,
        healthy backends mid-stream (found by the 16-stream benchmark, when streams still
        shared this pool). A timeout is not retried: that is a hang.
        """
        for attempt in (1, 2):
            try:
                await self._http.get(f"{self.url}/health", timeout=timeout_s)
                return True
            except httpx.TimeoutException:
                return False
            except httpx.HTTPError:
                if attempt == 2 or self.exited.done():
                    return False
            except RuntimeError:  # the pool was closed: the router is stopping
                return False
        return False
