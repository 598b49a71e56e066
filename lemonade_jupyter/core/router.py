"""The router: the composition root of the core and its public API.

It builds the parts and wires them; each owns one thing and none knows the router:
:class:`~.runtime.RouterRuntime` (phase, settings, tasks, state file; the
:class:`~.effects.Effects`), :class:`~.model_table.ModelTable` (the live models),
:class:`~.supervisor.Supervisor` (crash policy, eviction commit),
:class:`~.request_leases.RequestLeases` (loads, leases, the one replay), aliases (resolved at
every public entry point by :meth:`Router.resolve`: below, only model names exist), remote
models (:class:`~.remote.RemoteRegistry`, beside the table) and observers that read
:meth:`Router.snapshot`. One event loop; public methods return snapshots or a :class:`Lease`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from . import eviction
from .aliases import ModelAliases
from .catalog import Catalog
from .cooldown import CrashLoopGuard
from .decisions import EvictReason
from .events import EventLog
from .housekeeping import WATCHER_WINDOW_S, memory_loop
from .launcher import BackendLauncher, Launcher
from .lease import Lease  # the server imports it from here
from .live_model import LiveModel, RouterSnapshot
from .log_folder import private_log_dir
from .log_worker import TailReader
from .memory import MemoryMonitor
from .metrics import RouterMetrics
from .model_table import ModelTable
from .options import LoadOptions
from .preferences import ModelPreferences
from .remote import RemoteRegistry
from .remote_metrics import RemoteCollector
from .remote_target import Target, choose_target, refuse_remote
from .request_leases import RequestLeases
from .request_stats import RequestStats
from .runtime import RouterPhase, RouterRuntime
from .settings import RouterSettings
from .supervisor import Supervisor

T = TypeVar("T")


class Router:
    """Keeps models loaded within per-type slots and hands out leases to their backends."""

    def __init__(self, catalog: Catalog, settings: RouterSettings | None = None, *,
                 llama_server_path: str | None = None, data_dir: Path | None = None,
                 keep_state: bool = True, log_dir: Path | None = None,
                 events: EventLog | None = None, nvml: Any | None = None,
                 launcher: BackendLauncher | None = None) -> None:
        """``launcher``: what starts backends (tests pass an in-memory one); None starts
        ``llama-server`` processes through :attr:`launcher`. ``keep_state`` False: another
        router holds ``data_dir``, so pins, the loaded set and settings are neither restored
        nor saved (registrations and aliases still are). ``nvml``: a stand-in for pynvml."""
        self.catalog = catalog
        self.events = events or EventLog()
        self.preferences = ModelPreferences()
        self.aliases = ModelAliases(data_dir, lambda name: name in catalog)
        #: Things a user should know about this router's set-up (``/health`` shows them).
        self.notes: list[str] = []
        # Backend logs: a private folder (log_folder.py), removed on a clean stop; not theirs.
        self._own_log_dir = log_dir is None
        self.launcher = Launcher(llama_server_path, log_dir or private_log_dir(data_dir),
                                 settings=lambda: self.settings, http=lambda: self.http)
        self.log_reader = TailReader()  # log tails for the log stream, in worker processes
        self.memory = MemoryMonitor(lambda: self._table.backend_pids(), nvml=nvml)
        self._runtime = RouterRuntime(settings or RouterSettings(),
                                      state_dir=data_dir if keep_state else None,
                                      preferences=self.preferences, memory=self.memory,
                                      events=self.events)
        self._table = ModelTable(catalog=catalog, preferences=self.preferences,
                                 launcher=launcher or self.launcher, events=self.events,
                                 effects=self._runtime)
        self._supervisor = Supervisor(self._table, self._runtime, self.preferences, self.events)
        self._runtime.attach(self._table, self._supervisor)
        self._leases = RequestLeases(self._table, self._supervisor, catalog=catalog,
                                     events=self.events, effects=self._runtime)
        self._changes = self._table.changes  # wakes whoever waits for "any model changed"
        self.memory.add_listener(self._table.apply_memory_sample)
        self.stats = RequestStats()  # the last generation's figures, fed by the proxy
        self.metrics = RouterMetrics(self.events, self.snapshot, self.stats)
        self.remote = RemoteRegistry(data_dir, self.events, lambda: self.settings)
        self.metrics.registry.register(RemoteCollector(self.remote))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the control connection pool, restore saved state, start the loops."""
        loaded = self._runtime.open(frozenset(spec.name for spec in self.catalog.all()))
        if loaded is None:
            return  # started before
        spawn = self._runtime.spawn
        spawn(self._supervisor.watch())
        spawn(self.remote.run())
        spawn(memory_loop(settings=lambda: self.settings, sampling_needed=self._sampling_needed,
                          evicting=self._supervisor.evicting, sample=self.memory.sample,
                          evaluate=self.evaluate_eviction))
        if self.settings.restore_on_start and loaded:
            spawn(self._leases.restore(loaded))

    async def stop(self) -> None:
        """Refuse new work, cancel pulls, stop every backend, then our tasks. The server cuts
        proxied requests first: llama-server ignores SIGTERM while it generates."""
        if not self._runtime.stopping():
            return
        self._table.notify_all()
        self.catalog.pulls.cancel_all()  # hung up at once; their waiters get the error
        await self._runtime.cancel_tasks()
        await self._table.stop_all()
        await self._runtime.end_tasks()
        self.memory.close()
        await self.log_reader.close()
        if self._own_log_dir:
            shutil.rmtree(self.launcher.log_dir, ignore_errors=True)
        self._runtime.stopped()

    @property
    def phase(self) -> RouterPhase:
        return self._runtime.phase

    @property
    def settings(self) -> RouterSettings:
        """The settings in force (replaced as a whole, never mutated)."""
        return self._runtime.current

    @settings.setter
    def settings(self, value: RouterSettings) -> None:
        self._runtime.current = value

    @property
    def _guard(self) -> CrashLoopGuard:
        return self._runtime.guard()

    @property
    def http(self) -> httpx.AsyncClient:
        """The pool for control traffic to backends (proxied requests: ``server/upstream.py``)."""
        return self._runtime.http

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
        """Make ``name`` ready (pulling, loading, restoring or reloading it), count it as used.

        ``pinned`` None keeps the live pin, else the remembered one, else False. Options in
        ``given`` that change the process reload the model in its slot. ``reason`` "load" is
        a user's explicit load, which the crash-loop guard never refuses. Raises
        ModelNotFoundError, SlotsPinnedError, CoolingDownError, EngineMissingError,
        ModelLoadError, BackendShutdownError."""
        return await self._leases.load(self.resolve(name), pinned=pinned, options=options,
                                       given=given, reason=reason)

    async def acquire(self, name: str, *, slot: bool = True,
                      options: LoadOptions | None = None,
                      given: frozenset[str] = frozenset()) -> Lease:
        """Auto-load ``name`` if needed and take a lease on its backend (one request); with
        ``slot`` also one of its parallel slots, queueing while all are busy. ``options``
        (those in ``given``) shape a load this call starts, never a model already there.
        Raises QueueFullError (429) beyond ``max_queue`` waiting requests, and what loading
        raises."""
        return await self._leases.acquire(self.resolve(name), slot=slot, options=options,
                                          given=given)

    def serves_now(self, name: str, *, slot: bool = True) -> bool:
        """Whether :meth:`acquire` of local model ``name`` would not wait (a hint for what the
        caller does while waiting: :meth:`RequestLeases.serves_now`)."""
        return self._leases.serves_now(self.resolve(name), slot=slot)

    def release(self, lease: Lease, *, ok: bool = True) -> None:
        """End a lease; ``ok`` means the backend answered, which ends a crash streak."""
        self._leases.release(lease, ok=ok)

    def lease(self, name: str) -> contextlib.AbstractAsyncContextManager[Lease]:
        """``async with router.lease(name) as lease:`` — acquire, always release."""
        return self._leases.lease(name, acquire=self.acquire)

    async def call(self, name: str, send: Callable[[Lease], Awaitable[T]], *,
                   replayable: Callable[[], bool] = lambda: True,
                   acquire: Callable[[str], Awaitable[Lease]] | None = None) -> T:
        """Send one request through a lease (``acquire``, default :meth:`acquire`), replaying
        it once if the backend died and ``replayable()`` (:meth:`RequestLeases.call`); else,
        or after a second failure, UpstreamError. Reloads are single-flight."""
        return await self._leases.call(name, send, replayable=replayable,
                                       acquire=acquire or self.acquire)

    async def report_failure(self, lease: Lease) -> None:
        """A request to ``lease``'s backend failed in transport: returns once the supervisor
        dealt with it (a dead backend removed, a hung one killed), so a replay may follow."""
        await self._supervisor.report_failure(lease.model, lease.backend)

    # ------------------------------------------------------------------ operations
    async def unload(self, name: str | None = None) -> None:
        """Explicitly unload one model (pinned too) or, with None, all, once their requests
        end; forgets their pins and options. ModelNotFoundError for one that is not loaded."""
        if name is not None:
            name = self.resolve(name)
            refuse_remote(self.target(name), name, "unloaded")
        await self._table.unload(name)

    async def set_pinned(self, name: str, pinned: bool) -> LiveModel:
        """Pin or unpin a loaded model (no reload). Pinning a downsized model restores it."""
        name = self.resolve(name)
        refuse_remote(self.target(name), name, "pinned" if pinned else "unpinned")
        return self._table.pin(name, pinned)

    async def update_settings(self, updates: Mapping[str, Any]) -> RouterSettings:
        """Validate and apply runtime settings; a lower limit shrinks pools at once."""
        new = self._runtime.update_settings(updates)
        await self._table.settings_changed()
        return new

    def replace_settings(self, **changes: Any) -> None:
        """Start-up only: set non-runtime settings (used by the server layer and tests)."""
        self._runtime.replace_settings(**changes)

    # ------------------------------------------------------------------ eviction and hangs
    async def downsize(self, m: LiveModel, reason: str = "idle") -> int | None:
        """Stop an idle model's process but keep its slot, pin and options; the bytes freed,
        if known (llama-server's sleep mode kept ~22% and woke no faster: see benchmarks/)."""
        return await self._table.downsize(m)

    async def evict(self, m: LiveModel, reason: str) -> bool:
        """Automatic eviction (idle, pressure, ...): never a pinned or busy model."""
        return await self._table.evict(m, EvictReason(reason))

    async def evaluate_eviction(self, pressure: float | Mapping[str, float] | None,
                                ) -> list[eviction.Decision]:
        """Plan, wait the grace period, commit what was not rescued; the decisions carried out
        (:meth:`Supervisor.evaluate_eviction`)."""
        return await self._supervisor.evaluate_eviction(pressure)

    async def check_backends(self) -> None:
        """One watchdog round: probe every serving backend, kill those found hung."""
        await self._supervisor.check_backends()

    def note_watcher(self) -> None:
        """A client looked at memory (``/health``, the event stream): keep sampling a while."""
        self.memory.note_watcher()

    def _sampling_needed(self) -> bool:
        return (self.memory.watched_within(WATCHER_WINDOW_S)
                or self.events.subscriber_count > 0 or self._supervisor.evicting())
