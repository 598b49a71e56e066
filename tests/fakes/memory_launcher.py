"""An in-memory launcher: backends that start, serve, crash and hang without a process.

The router's rules (admission, slots, pins, eviction order, the crash policy, cooldowns) do
not depend on what a backend *is*, only on what it reports: ready, exited (with a code),
answering its health probe or not, how many parallel slots it has. :class:`MemoryLauncher`
implements :class:`lemonade_jupyter.core.launcher.BackendLauncher` with such backends, so a
test of those rules needs no ``llama-server``, no port and no sleep. End-to-end tests of
spawning, signals, streaming and memory keep the real engine.

What a test can tell it, per model name:

* ``fail_starts[name] = n``: the next ``n`` starts fail with ModelLoadError.
* ``gate(name)``: starts of ``name`` wait until the test calls ``release(name)`` (a load in
  progress, for as long as the test wants).
* ``missing.add(name)``: its weights are gone (ModelNotFoundError before admission).
* ``total_slots[name] = n``: the parallel slots its backends report.
* ``backend.crash(code)``, ``backend.hang()``: the process dies, or stops answering.

``MemoryLauncher(serve_http=True)``: each backend also answers HTTP on a loopback port of its
own (:mod:`tests.fakes.memory_http`), so the whole app (proxy, handlers, kernel client) runs on
it; ``launcher.replies`` holds what they answer and what they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lemonade_jupyter.core.backend import Backend, BackendState
from lemonade_jupyter.core.catalog import Catalog, ModelSpec
from lemonade_jupyter.core.engines.probe import EngineDevice
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.placement import Placement
from lemonade_jupyter.core.router import Router
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import ModelLoadError, ModelNotFoundError

from .memory_http import BackendHTTP, Replies

_generations = itertools.count(1_000_000)


class MemoryBackend:
    """What the router reads of a backend, held in memory. Ready once it is returned."""

    def __init__(self, spec: ModelSpec, options: LoadOptions, placement: Placement,
                 total_slots: int | None, http: BackendHTTP | None = None) -> None:
        self.spec = spec
        self.options = options
        self.placement = placement
        self.generation = next(_generations)
        self.state = BackendState.READY
        self.started_at = time.time()
        self.load_duration_ms = 1.0
        self.served = False
        self.buffer_report: dict[str, int] = {}
        self.total_slots = total_slots
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.answers = True
        self.stops = 0
        self._stop_requested = False
        #: Its loopback server (None: it answers no HTTP; the router's rules need none).
        self.http = http
        #: The key a request must carry, as llama-server's ``--api-key`` (redacted from logs).
        self.api_key = http.api_key if http is not None else f"memory-key-{self.generation}"
        self._closing: asyncio.Task[None] | None = None

    # What the router reads ------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return None  # no process: nothing to signal or to measure

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def url(self) -> str:
        if self.http is not None:
            return f"http://127.0.0.1:{self.http.port}"
        return f"http://127.0.0.1:9/{self.spec.name}/{self.generation}"

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.http.port if self.http is not None else 9

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_head(self, max_bytes: int = 0) -> str:
        return ""

    async def probe(self, timeout_s: float) -> bool:
        return self.answers and not self.exited.done()

    async def stop(self) -> None:
        """Idempotent, like the real one; the exit is resolved, and its callbacks have run,
        before it returns (the real one awaits the reaping of its process)."""
        self._stop_requested = True
        self.stops += 1
        self._end(0)
        await asyncio.sleep(0)  # one loop step: the exit's done-callbacks run now
        if self._closing is not None:
            await self._closing

    # What a test does to it ---------------------------------------------------------
    def crash(self, code: int = 1) -> None:
        """The process died on its own."""
        self._end(code)

    def hang(self) -> None:
        """The process is alive but answers no probe (SIGSTOP, a deadlock)."""
        self.answers = False

    def _end(self, code: int) -> None:
        self.state = BackendState.STOPPED
        if self.http is not None and self._closing is None:  # a dead process answers nothing
            self._closing = asyncio.get_running_loop().create_task(self.http.close())
        if not self.exited.done():
            self.exited.set_result(code)


class MemoryLauncher:
    """A :class:`~lemonade_jupyter.core.launcher.BackendLauncher` of in-memory backends."""

    def __init__(self, *, serve_http: bool = False) -> None:
        self.serve_http = serve_http
        self.replies = Replies()
        self.fail_starts: dict[str, int] = {}
        self.missing: set[str] = set()
        self.total_slots: dict[str, int] = {}
        #: Every start attempt, in order, by model name.
        self.starts: list[str] = []
        self.backends: list[MemoryBackend] = []
        self._gates: dict[str, asyncio.Event] = {}
        self._at_gate: dict[str, int] = {}

    def gate(self, name: str) -> None:
        """Hold starts of ``name`` until :meth:`release`."""
        self._gates[name] = asyncio.Event()

    def release(self, name: str) -> None:
        self._gates.pop(name).set()

    def waiting(self, name: str) -> int:
        """How many starts of ``name`` wait at its gate now."""
        return self._at_gate.get(name, 0)

    def backend(self, name: str) -> MemoryBackend:
        """The newest backend started for ``name``."""
        return [b for b in self.backends if b.spec.name == name][-1]

    # BackendLauncher ------------------------------------------------------------------
    def check_can_start(self, spec: ModelSpec) -> None:
        if spec.name in self.missing:
            raise ModelNotFoundError(f"The weights file of '{spec.name}' does not exist.",
                                     param="model")

    def offloads(self) -> bool:
        return False

    def engine_gpus(self) -> tuple[EngineDevice, ...]:
        return ()

    async def probe_engine(self) -> None:
        return None

    async def start(self, spec: ModelSpec, options: LoadOptions,
                    placement: Placement | None = None) -> Backend:
        self.check_can_start(spec)
        self.starts.append(spec.name)
        gate = self._gates.get(spec.name)
        if gate is not None:
            self._at_gate[spec.name] = self._at_gate.get(spec.name, 0) + 1
            try:
                await gate.wait()
            finally:
                self._at_gate[spec.name] -= 1
        if self.fail_starts.get(spec.name, 0) > 0:
            self.fail_starts[spec.name] -= 1
            raise ModelLoadError(f"'{spec.name}' failed to start (told to)")
        http = None
        if self.serve_http:
            http = BackendHTTP(spec.name, self.replies)
            await http.open()
        backend = MemoryBackend(spec, options, placement or Placement(),
                                self.total_slots.get(spec.name), http)
        self.backends.append(backend)
        return backend  # type: ignore[return-value]  # duck-typed: what the router reads


def memory_catalog(folder: Path, names: list[str]) -> Catalog:
    """A catalog of user models ``names``, each a small file (the launcher never reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights.gguf"
    weights.write_bytes(b"GGUF" + bytes(60))
    catalog = Catalog(folder / "data")
    for name in names:
        catalog.add_user_model(name, str(weights))
    return catalog


@contextlib.asynccontextmanager
async def memory_router(catalog: Catalog, launcher: MemoryLauncher, folder: Path,
                        **settings: Any) -> AsyncIterator[Router]:
    """A started router whose backends are ``launcher``'s; always stopped on the way out."""
    router = Router(catalog, RouterSettings(), data_dir=folder / "data",
                    log_dir=folder / "logs", launcher=launcher)
    router.replace_settings(**settings)
    await router.start()
    try:
        yield router
    finally:
        await router.stop()
