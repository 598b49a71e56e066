"""The router: the composition root of the core and its public API.

It builds the parts and wires them together; each part owns one thing and none of them knows
the router:

* :class:`~.model_table.ModelTable`: the live models, admission, transitions; the one writer
  of every model's record. It asks the world through :class:`~.effects.Effects` (built here
  as :class:`RouterEffects`) and a :class:`~.launcher.BackendLauncher`.
* :class:`~.supervisor.Supervisor`: the crash policy (crashes, hangs, the pinned reload) and
  the eviction commit.
* :class:`~.preferences.ModelPreferences`: each model's pin and load options (persisted).
* :class:`~.cooldown.CrashLoopGuard`: the start limit of crash-looping models.
* :class:`~.aliases.ModelAliases`: other names of models, resolved at every public entry point
  (:meth:`Router.resolve`), so below the router only model names exist.
* :mod:`.eviction` (a pure plan), :mod:`.housekeeping` (the memory loop) and
  :class:`~.watchdog.Watchdog` (finds hung backends): they report, the supervisor acts.
* :class:`~.metrics.RouterMetrics` and the views read :meth:`Router.snapshot`.

The router itself owns its phase (new, running, stopping, stopped), the background tasks, the
settings object (replaced as a whole, never mutated) and the state file. Everything on one
event loop; every public method returns a snapshot or a :class:`Lease`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ..errors import (
    BackendShutdownError, BackendTransportError, InvalidRequestError, LemonadeError,
    ModelNotFoundError, UpstreamError,
)
from . import eviction, placement, request_slots, saved_state
from .aliases import ModelAliases
from .backend import Backend
from .catalog import Catalog
from .cooldown import CrashLoopGuard
from .decisions import EvictReason
from .events import EventLog
from .housekeeping import WATCHER_WINDOW_S, memory_loop
from .launcher import BackendLauncher, Launcher
from .lease import Lease
from .lifecycle import ModelState
from .live_model import LiveModel, RouterSnapshot
from .log_folder import private_log_dir
from .log_worker import TailReader
from .memory import MemoryMonitor, MemorySample
from .metrics import RouterMetrics
from .model_table import ModelTable
from .options import LoadOptions
from .persistence import RouterStateStore
from .preferences import ModelPreferences
from .remote import RemoteRegistry
from .remote_metrics import RemoteCollector
from .remote_target import LocalTarget, Target, choose_target
from .request_stats import RequestStats
from .settings import RouterSettings
from .supervisor import Supervisor
from .watchdog import run_every

log = logging.getLogger(__name__)

T = TypeVar("T")


class RouterPhase(str, enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Router:
    """Keeps models loaded within per-type slots and hands out leases to their backends."""

    def __init__(
        self,
        catalog: Catalog,
        settings: RouterSettings | None = None,
        *,
        llama_server_path: str | None = None,
        data_dir: Path | None = None,
        keep_state: bool = True,
        log_dir: Path | None = None,
        events: EventLog | None = None,
        nvml: Any | None = None,
        launcher: BackendLauncher | None = None,
    ) -> None:
        """``launcher``: what starts backends (tests pass an in-memory one); None starts
        ``llama-server`` processes through :attr:`launcher`."""
        self.catalog = catalog
        self.settings = settings or RouterSettings()
        self.events = events or EventLog()
        self.preferences = ModelPreferences()
        #: Other names of catalog models; every public entry point resolves them.
        self.aliases = ModelAliases(data_dir, lambda name: name in catalog)
        self.phase = RouterPhase.NEW
        #: Things a user should know about this router's set-up (``/health`` shows them).
        self.notes: list[str] = []
        # Backend logs (the engine's reason on a failed start): a private folder under the
        # data folder (log_folder.py), removed on a clean stop; one the caller gave is theirs.
        self._own_log_dir = log_dir is None
        self.launcher = Launcher(
            llama_server_path, log_dir or private_log_dir(data_dir),
            settings=lambda: self.settings, http=lambda: self.http,
        )
        #: Reads log tails for the log stream in worker processes (log_worker.py).
        self.log_reader = TailReader()
        # ``keep_state`` False: another router holds ``data_dir``; pins, the loaded set and
        # settings are then neither restored nor saved (registrations and aliases still are).
        self._store = RouterStateStore(data_dir if keep_state else None)
        self._guard = self._new_guard()
        self._http: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # ``nvml``: a stand-in for the pynvml module (tests); None imports the real one.
        self.memory = MemoryMonitor(self._backend_pids, nvml=nvml)
        effects = RouterEffects(self)
        self._table = ModelTable(catalog=catalog, preferences=self.preferences,
                                 launcher=launcher or self.launcher, events=self.events,
                                 effects=effects)
        self._supervisor = Supervisor(self._table, effects, self.preferences, self.events)
        #: Wakes whoever waits for "any model changed" (the table's signal).
        self._changes = self._table.changes
        self.memory.add_listener(self._table.apply_memory_sample)
        #: The last generation request's figures; fed by the proxy (``stats.record``).
        self.stats = RequestStats()
        self.metrics = RouterMetrics(self.events, self.snapshot, self.stats)
        # Remote models (recipe "remote") live beside the table, never in it: no slot, no
        # eviction, no pin. The registry owns them and their replicas' probe loop.
        self.remote = RemoteRegistry(data_dir, self.events, lambda: self.settings)
        self.metrics.registry.register(RemoteCollector(self.remote))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the control connection pool, restore saved state, start the loops."""
        if self.phase is not RouterPhase.NEW:
            return
        self.phase = RouterPhase.RUNNING
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            timeout=httpx.Timeout(None, connect=5.0),
        )
        known = frozenset(spec.name for spec in self.catalog.all())
        restored = saved_state.restore(self._store.read(), self.settings, self.preferences,
                                       known)
        self.settings = restored.settings
        self._spawn(run_every(lambda: self.settings.watchdog_interval_s, self.check_backends))
        self._spawn(self.remote.run())
        self._spawn(memory_loop(
            settings=lambda: self.settings, sampling_needed=self._sampling_needed,
            evicting=self._evicting, sample=self.memory.sample,
            evaluate=self.evaluate_eviction,
        ))
        if self.settings.restore_on_start and restored.loaded:
            self._spawn(self._restore(restored.loaded))

    async def _restore(self, names: tuple[str, ...]) -> None:
        for name in names:
            try:
                await self.load(name, reason="restore")
            except LemonadeError as exc:
                log.warning("Could not restore %s at start: %s", name, exc.message)

    async def stop(self) -> None:
        """Refuse new work, cancel pulls, end in-flight requests, stop every backend, then our
        tasks.

        Proxied requests must be cut before this runs (the server layer closes its
        ``UpstreamPool`` first): llama-server ignores SIGTERM while it generates, so a stream
        still in flight would hold shutdown for the whole stop grace.
        """
        if self.phase in (RouterPhase.STOPPING, RouterPhase.STOPPED):
            return
        self.phase = RouterPhase.STOPPING
        self._table.notify_all()
        self.catalog.pulls.cancel_all()  # hung up at once; their waiters get the error
        for task in list(self._background):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
        await self._table.stop_all()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._store.close()
        self.memory.close()
        await self.log_reader.close()
        if self._own_log_dir:
            shutil.rmtree(self.launcher.log_dir, ignore_errors=True)
        self.phase = RouterPhase.STOPPED

    @property
    def http(self) -> httpx.AsyncClient:
        """The pool for control traffic to backends: readiness, ``/props``, watchdog probes.

        Proxied requests do not use it: the server layer has its own, cheaper pool
        (``server/upstream.py``)."""
        if self._http is None:
            raise RuntimeError("Router.start() has not been awaited")
        return self._http

    # ------------------------------------------------------------------ queries (snapshots)
    def live_models(self) -> list[LiveModel]:
        """Admitted models (loading ones included), in no particular order."""
        return self._table.live()

    def get_live(self, name: str) -> LiveModel | None:
        return self._table.get(self.resolve(name))

    def resolve(self, name: str) -> str:
        """The model ``name`` stands for (an alias gives its model; anything else itself)."""
        return self.aliases.resolve(name)

    def target(self, name: str) -> Target:
        """Local or remote: what a request for ``name`` goes to (``remote_target.py``)."""
        return choose_target(name, self.remote, self.resolve)

    def remembered_pin(self, name: str) -> bool:
        return self.preferences.pinned(name)

    def slots(self) -> int:
        return self.settings.max_loaded_models

    def model_types(self) -> list[str]:
        return sorted({"llm"} | {s.type for s in self.catalog.all()})

    def snapshot(self) -> RouterSnapshot:
        """The admitted models, the types and the latest memory sample, as copies."""
        return RouterSnapshot(tuple(m.snapshot() for m in self._table.live()),
                              tuple(self.model_types()), self.memory.latest)

    # ------------------------------------------------------------------ requests
    async def load(self, name: str, *, pinned: bool | None = None,
                   options: LoadOptions | None = None, given: frozenset[str] = frozenset(),
                   reason: str = "load") -> LiveModel:
        """Make ``name`` ready (loading, restoring or reloading it) and count it as used.

        ``pinned`` None keeps the live pin, else the remembered one, else False. Options in
        ``given`` that change the process reload the model in its slot. ``reason`` "load" is
        a user's explicit load, which the crash-loop guard never refuses. Raises
        ModelNotFoundError, SlotsPinnedError, CoolingDownError, EngineMissingError,
        ModelLoadError, BackendShutdownError.
        """
        if pinned is not None and not isinstance(pinned, bool):
            raise InvalidRequestError("Parameter 'pinned' must be a boolean", param="pinned")
        if options is not None and isinstance(options.device, tuple):
            # A GPU that does not exist is a 400 before anything changes (not a failed reload).
            sample = await self.memory.fresh(5.0)
            placement.choose(options, sample.gpus(), offload=False)
        name = self.resolve(name)
        await self.catalog.ensure_local(name, progress=self.events.emit)  # pulls it if needed
        return await self._table.ensure(name, pinned=pinned, options=options or LoadOptions(),
                                        given=given, reason=reason, explicit=reason == "load")

    async def acquire(self, name: str, *, slot: bool = True,
                      options: LoadOptions | None = None,
                      given: frozenset[str] = frozenset()) -> Lease:
        """Auto-load ``name`` if needed and take a lease on its backend (one request).

        With ``slot`` the lease also takes one of the backend's parallel slots, waiting in the
        model's queue while all are busy (:mod:`.request_slots`). ``options`` (those in
        ``given``) apply only to a load this call starts: a model already there keeps its own.
        Raises QueueFullError (429) when ``max_queue`` requests already wait, and whatever
        loading it raises.
        """
        name = self.resolve(name)
        await self.catalog.ensure_local(name, progress=self.events.emit)  # pulls it if needed
        while True:
            m = await self._table.ensure(name, pinned=None, options=options or LoadOptions(),
                                         given=given, reason="request", explicit=False,
                                         new_only=True)
            if slot and not request_slots.has_free_slot(m):
                def serving(m: LiveModel = m) -> bool:
                    return (self._table.get(name) is m and m.backend is not None
                            and m.stored_state is ModelState.READY)

                bound = request_slots.queue_bound(m, self.settings)
                if not await self._table.wait_for_slot(m, bound, serving):
                    continue  # it stopped serving meanwhile: ask for it again
            return Lease(m, self._table.take_lease(m, slot=slot), slot)

    def release(self, lease: Lease, *, ok: bool = True) -> None:
        """End a lease; ``ok`` means the backend answered, which ends a crash streak."""
        self._table.end_lease(lease.model, slot=lease.slot)
        if ok and not lease.backend.exited.done():
            lease.backend.served = True
            self._guard.success(lease.model.name)

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Lease]:
        """``async with router.lease(name) as lease:`` — acquire, always release."""
        lease = await self.acquire(name)
        ok = False
        try:
            yield lease
            ok = True
        finally:
            self.release(lease, ok=ok)

    async def call(self, name: str, send: Callable[[Lease], Awaitable[T]], *,
                   replayable: Callable[[], bool] = lambda: True,
                   acquire: Callable[[str], Awaitable[Lease]] | None = None) -> T:
        """Send one request to ``name``'s backend, replaying it once if the backend died.

        Takes a lease (``acquire``, default :meth:`acquire`), awaits ``send(lease)`` and
        releases. When ``send`` raises :class:`BackendTransportError`, the router finds out
        what happened to the backend (:meth:`report_failure`: a dead one is removed, a hung one
        killed, a pinned one reloaded) and, if ``replayable()`` still says so, sends once more
        through a new lease. A second failure, or one that may not be replayed (a stream
        that already reached the client), raises UpstreamError. Two requests that hit the
        same dead backend cause one reload: reloads are single-flight.
        """
        take = acquire or self.acquire
        for attempt in (1, 2):
            lease = await take(name)
            ok = False
            try:
                result = await send(lease)
                ok = True
                return result
            except BackendTransportError as exc:
                failure = exc
            finally:
                self.release(lease, ok=ok)
            await self.report_failure(lease)
            if attempt == 2 or not replayable():
                raise UpstreamError(
                    f"The backend of '{name}' failed: {failure.message}") from failure
        raise AssertionError("unreachable")

    async def report_failure(self, lease: Lease) -> None:
        """A request to ``lease``'s backend failed in transport: find out if it died.

        Returns once the router has dealt with it (a dead backend is removed, a hung one
        killed), so the caller can replay through a new lease.
        """
        await self._supervisor.report_failure(lease.model, lease.backend)

    # ------------------------------------------------------------------ operations
    async def unload(self, name: str | None = None) -> None:
        """Explicitly unload one model (pinned too) or, with None, all of them.

        Forgets the remembered pin and options. Waits for in-flight requests to finish.
        Raises ModelNotFoundError for a model that is not loaded.
        """
        if name is not None:
            name = self.resolve(name)
            self.refuse_remote(name, "unloaded")
        await self._table.unload(name)

    async def set_pinned(self, name: str, pinned: bool) -> LiveModel:
        """Pin or unpin a loaded model (no reload). Pinning a downsized model restores it."""
        name = self.resolve(name)
        self.refuse_remote(name, "pinned" if pinned else "unpinned")
        m = self.get_live(name)
        if m is None or m.state in (ModelState.EVICTING, ModelState.UNLOADED):
            if name not in self.catalog:
                raise ModelNotFoundError(f"Model '{name}' is not in the catalog", param="model")
            raise ModelNotFoundError(
                f"Model '{name}' is not loaded; load it first (pins apply to loaded models)",
                param="model",
            )
        self._table.set_pin(m, pinned)
        if pinned and m.state is ModelState.DOWNSIZED:
            self._spawn(self._quiet(self._table.ensure(
                name, pinned=None, options=LoadOptions(), given=frozenset(), reason="pin",
                explicit=False, count_use=False)))
        return m

    async def update_settings(self, updates: Mapping[str, Any]) -> RouterSettings:
        """Validate and apply runtime settings; a lower limit shrinks pools at once."""
        new = self.settings.with_updates(updates)
        self.settings = new
        self.events.emit("config", None, "manual", keys=sorted(updates))
        self._persist()
        self._table.notify_all()
        await self._table.shrink()
        return new

    def replace_settings(self, **changes: Any) -> None:
        """Start-up only: set non-runtime settings (used by the server layer and tests)."""
        self.settings = replace(self.settings, **changes)
        self._guard = self._new_guard()

    # ------------------------------------------------------------------ eviction
    async def downsize(self, m: LiveModel, reason: str = "idle") -> int | None:
        """Release an idle model's memory but keep its slot, pin and options.

        The backend process is stopped (llama-server's sleep mode keeps ~22% of its memory and
        wakes no faster than a restart; see benchmarks/). Returns the bytes freed, if known.
        """
        return await self._table.downsize(m)

    async def evict(self, m: LiveModel, reason: str) -> bool:
        """Automatic eviction (idle, pressure, ...): never a pinned or busy model."""
        return await self._table.evict(m, EvictReason(reason))

    async def evaluate_eviction(
        self, pressure: float | Mapping[str, float] | None,
    ) -> list[eviction.Decision]:
        """Plan on a snapshot, wait the grace period, then commit what was not rescued.

        ``pressure``: the used fraction per device key, one figure for every device, or None
        for an idle-only pass. Returns the decisions that were carried out.
        """
        return await self._supervisor.evaluate_eviction(pressure)

    def note_watcher(self) -> None:
        """A client looked at memory (``/health``, the event stream): keep sampling a while."""
        self.memory.note_watcher()

    def _sampling_needed(self) -> bool:
        return (self.memory.watched_within(WATCHER_WINDOW_S)
                or self.events.subscriber_count > 0 or self._evicting())

    def _evicting(self) -> bool:
        return eviction.any_enabled(self._table.snapshots(), self.settings)

    # ------------------------------------------------------------------ hangs
    async def check_backends(self) -> None:
        """One watchdog round: probe every serving backend, kill those found hung."""
        await self._supervisor.check_backends()

    # ------------------------------------------------------------------ memory
    def _backend_pids(self) -> list[int]:
        return [m.backend.pid for m in self._table.entries()
                if m.backend is not None and m.backend.pid is not None]

    # ------------------------------------------------------------------ helpers
    def refuse_remote(self, name: str, what: str) -> None:
        """Remote models run on their upstream: there is nothing here to pin or unload."""
        if not isinstance(self.target(name), LocalTarget):
            raise InvalidRequestError(
                f"'{name}' is a remote model: it runs on its upstream and is not loaded here "
                f"(it takes no slot and is never evicted), so it cannot be {what}",
                param="model")

    def _check_open(self) -> None:
        if self.phase is RouterPhase.NEW:
            raise RuntimeError("Router.start() has not been awaited")
        if self.phase is not RouterPhase.RUNNING:
            raise BackendShutdownError("The lemonade router is shutting down")

    def _new_guard(self) -> CrashLoopGuard:
        s = self.settings
        return CrashLoopGuard(s.crash_loop_threshold, s.crash_cooldown_s,
                              s.crash_cooldown_max_s, s.crash_loop_window_s)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _quiet(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except LemonadeError as exc:
            log.warning("Background reload failed: %s", exc.message)

    def _persist(self) -> None:
        """Save preferences, the loaded set and the persisted settings (off the loop)."""
        if self.phase is not RouterPhase.RUNNING:
            return
        self._store.save(saved_state.to_json(
            self.preferences, (m.name for m in self._table.live()), self.settings))


class RouterEffects:
    """What the model table and the supervisor ask of the router (:class:`~.effects.Effects`).

    A small object rather than methods of :class:`Router`, so the router's public surface stays
    its API; it reads the router's state at each call, never a copy."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def settings(self) -> RouterSettings:
        return self._router.settings

    def guard(self) -> CrashLoopGuard:
        return self._router._guard

    def check_open(self) -> None:
        self._router._check_open()

    def running(self) -> bool:
        return self._router.phase is RouterPhase.RUNNING

    def persist(self) -> None:
        self._router._persist()

    async def measure(self) -> MemorySample:
        return await self._router.memory.sample()

    async def fresh(self, max_age_s: float) -> MemorySample:
        return await self._router.memory.fresh(max_age_s)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._router._spawn(coro)

    def backend_exited(self, m: LiveModel, backend: Backend) -> None:
        self._router._supervisor.backend_exited(m, backend)

    async def backend_hung(self, m: LiveModel, backend: Backend) -> None:
        await self._router._supervisor.kill(m, backend)
