"""The router: many models, one backend each, per-type slots, LRU, pins, reloads.

Rules (SPEC §3) in one place:

* A pool is the admitted models of one type; it holds at most ``max_loaded_models`` (-1: no
  limit). A fresh load into a full pool evicts the pool's least recently used *unpinned*, idle
  model; when every member is pinned it fails with :class:`SlotsPinnedError` and evicts nothing.
* Loads, restores and evictions are *transitions*, at most one per model at a time
  (single-flight): everyone who needs the model awaits the same task.
* No lock is ever held across an await. Decisions (``decisions.py``) are plain functions run
  between awaits; waiting is done on ``_changed``, an event that is set and replaced whenever a
  model's state, slot or in-flight count changes.
* A pin is remembered by name (``_pins``) from the moment it is set until an explicit unpin or
  unload, so every reload path (option change, failed-load retry, crash reload, auto-load from
  a request) gets it back.

Owned and written only by the event loop the router was started on: ``_models``, ``_pins``,
``_transitions``, ``settings``. Everything returned from public methods is a snapshot or a
:class:`Lease`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from ..errors import (
    BackendShutdownError,
    CoolingDownError,
    InvalidRequestError,
    LemonadeError,
    ModelLoadError,
    ModelNotFoundError,
    SlotsPinnedError,
)
from . import process
from .backend import Backend
from .catalog import Catalog, ModelSpec
from .cooldown import CrashLoopGuard
from .decisions import admission, pool, shrink_victims
from .engines.llamacpp import LlamaCppEngine, find_llama_server
from .events import EventLog
from .eviction import EvictionEngine
from .metrics import RouterMetrics
from .live_model import SERVING, LiveModel, ModelState
from .memory import MemoryMonitor, MemorySample
from .options import LoadOptions
from .persistence import RouterStateStore
from .settings import RouterSettings

log = logging.getLogger(__name__)

#: A crash after this much uptime is not part of a crash loop.
STABLE_UPTIME_S = 10.0


@dataclass(frozen=True)
class Lease:
    """Permission to send one request to a model's backend; release it exactly once."""

    model: LiveModel
    backend: Backend

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def address(self) -> tuple[str, int]:
        return self.backend.address

    def headers(self) -> dict[str, str]:
        return self.backend.auth_headers()


class Router:
    """Keeps models loaded within per-type slots and hands out leases to their backends."""

    def __init__(
        self,
        catalog: Catalog,
        settings: RouterSettings | None = None,
        *,
        llama_server_path: str | None = None,
        data_dir: Path | None = None,
        log_dir: Path | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.catalog = catalog
        self.settings = settings or RouterSettings()
        self.events = events or EventLog()
        self._llama_server_path = llama_server_path
        # Backend logs (the engine's reason on a failed start). A directory we chose ourselves
        # is removed on a clean stop; one the caller gave is theirs.
        self._own_log_dir = log_dir is None
        self._log_dir = log_dir or Path(
            os.environ.get("TMPDIR", "/tmp"), f"lemonade-backends-{os.getpid()}-{id(self):x}"
        )
        self._store = RouterStateStore(data_dir)
        self._guard = CrashLoopGuard(
            self.settings.crash_loop_threshold,
            self.settings.crash_cooldown_s,
            self.settings.crash_cooldown_max_s,
        )
        self._models: dict[str, LiveModel] = {}
        self._pins: dict[str, bool] = {}
        self._transitions: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        #: Options of models whose backend crashed, until they load again: the reload that the
        #: next request triggers must not fall back to defaults (a pinned one reloads at once).
        self._crashed_options: dict[str, LoadOptions] = {}
        self._changed = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._started = False
        self._closing = False
        self._watchdog: asyncio.Task[None] | None = None
        self.memory = MemoryMonitor(self._backend_pids)
        self.eviction = EvictionEngine(self)
        self.metrics = RouterMetrics(self)
        self._eviction_task: asyncio.Task[None] | None = None
        self.memory.add_listener(self._apply_memory_sample)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the backend connection pool, restore saved state, start the watchdog."""
        if self._started:
            return
        self._started = True
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            timeout=httpx.Timeout(None, connect=5.0),
        )
        state = self._store.read()
        saved_settings = state.get("settings")
        if isinstance(saved_settings, dict):
            try:
                self.settings = self.settings.with_updates(saved_settings)
            except LemonadeError as exc:
                log.warning("Ignoring saved settings: %s", exc.message)
        pins = state.get("pins")
        if isinstance(pins, dict):
            self._pins = {
                str(k): True for k, v in pins.items() if v is True and str(k) in self.catalog
            }
        from .watchdog import Watchdog  # local: the watchdog imports Router for typing

        self._watchdog = asyncio.ensure_future(Watchdog(self).run())
        self._eviction_task = asyncio.ensure_future(self.eviction.run())
        loaded = state.get("loaded")
        if self.settings.restore_on_start and isinstance(loaded, list):
            names = [n for n in loaded if isinstance(n, str) and n in self.catalog]
            # Pinned models first: they are the ones a user asked to keep.
            names.sort(key=lambda n: not self._pins.get(n, False))
            self._spawn_background(self._restore(names))

    async def _restore(self, names: list[str]) -> None:
        for name in names:
            try:
                await self.load(name, reason="restore")
            except LemonadeError as exc:
                log.warning("Could not restore %s at start: %s", name, exc.message)

    async def stop(self) -> None:
        """Refuse new work, end in-flight requests, stop every backend, then our tasks.

        Proxied requests must be cut before this runs (the server layer closes its
        ``UpstreamPool`` first): llama-server ignores SIGTERM while it generates, so a stream
        still in flight would hold shutdown for the whole stop grace.
        """
        if self._closing:
            return
        self._closing = True
        self._notify()
        for task in list(self._background):
            task.cancel()
        for _kind, task in list(self._transitions.values()):
            task.cancel()
        for loop_task in (self._watchdog, self._eviction_task):
            if loop_task is not None:
                loop_task.cancel()
        if self._http is not None:
            await self._http.aclose()
        backends = [m.backend for m in self._models.values() if m.backend is not None]
        await asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
        await asyncio.gather(
            *(t for _k, t in self._transitions.values()), *self._background,
            *(t for t in (self._watchdog, self._eviction_task) if t is not None),
            return_exceptions=True,
        )
        for m in self._models.values():
            m.state = ModelState.UNLOADED
        self._models.clear()
        self._store.close()
        self.memory.close()
        if self._own_log_dir:
            shutil.rmtree(self._log_dir, ignore_errors=True)

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
        return [m for m in self._models.values() if m.admitted]

    def get_live(self, name: str) -> LiveModel | None:
        m = self._models.get(name)
        return m if m is not None and m.admitted else None

    def remembered_pin(self, name: str) -> bool:
        return self._pins.get(name, False)

    def slots(self) -> int:
        return self.settings.max_loaded_models

    def model_types(self) -> list[str]:
        types = {"llm"} | {s.type for s in self.catalog.all()}
        return sorted(types)

    # ------------------------------------------------------------------ operations
    async def load(
        self,
        name: str,
        *,
        pinned: bool | None = None,
        options: LoadOptions | None = None,
        given: frozenset[str] = frozenset(),
        reason: str = "load",
    ) -> LiveModel:
        """Make ``name`` ready (loading, restoring or reloading it) and count it as used.

        ``pinned`` None keeps the live pin, else the remembered one, else False. Options in
        ``given`` that change the process reload the model in its slot. Raises
        ModelNotFoundError, SlotsPinnedError, CoolingDownError, EngineMissingError,
        ModelLoadError, BackendShutdownError.
        """
        if pinned is not None and not isinstance(pinned, bool):
            raise InvalidRequestError("Parameter 'pinned' must be a boolean", param="pinned")
        return await self._ensure(
            name, pinned=pinned, options=options or LoadOptions(), given=given, reason=reason
        )

    async def acquire(self, name: str) -> Lease:
        """Auto-load ``name`` if needed and take a lease on its backend (one request)."""
        m = await self._ensure(name, pinned=None, options=LoadOptions(), given=frozenset(),
                               reason="request")
        assert m.backend is not None
        m.in_flight += 1
        m.state = ModelState.IN_USE
        return Lease(m, m.backend)

    def release(self, lease: Lease, *, ok: bool = True) -> None:
        """End a lease; ``ok`` means the backend answered, which ends a crash streak."""
        m = lease.model
        m.in_flight = max(0, m.in_flight - 1)
        if ok and not lease.backend.exited.done():
            self._guard.success(m.name)
        if m.in_flight == 0 and m.state is ModelState.IN_USE:
            m.state = ModelState.READY
        self._notify()

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

    async def report_failure(self, lease: Lease) -> None:
        """A request to ``lease``'s backend failed in transport: find out if it died.

        Returns once the router has dealt with it (a dead backend is removed, a hung one
        killed), so the caller can replay through a new lease. Two reports for the same
        backend lead to one reload because reloading is single-flight.
        """
        backend = lease.backend
        if self._closing:
            return  # the failure is our own shutdown closing the connection
        if not backend.exited.done():
            if await backend.probe(self.settings.watchdog_probe_timeout_s):
                return
            log.warning("Backend of %s does not answer; killing it", lease.model.name)
            await self.kill_hung(lease.model, backend)
            return
        self._on_backend_exit(lease.model, backend)

    async def kill_hung(self, m: LiveModel, backend: Backend) -> None:
        """Kill a backend that stopped answering and handle it as a crash (reload if pinned).

        SIGKILL at once: a hung process cannot stop gracefully, and a SIGSTOPped one that is
        continued first serves the requests queued meanwhile, which took the whole stop grace
        (5 s) before the reload in tests/reliability/test_faults.py.
        """
        if backend.pid is not None and not backend.exited.done():
            process.signal_group(backend.pid, signal.SIGKILL)
        await backend.stop()
        self._on_backend_exit(m, backend, forced=True)

    async def unload(self, name: str | None = None) -> None:
        """Explicitly unload one model (pinned too) or, with None, all of them.

        Forgets the remembered pin. Waits for in-flight requests to finish. Raises
        ModelNotFoundError for a model that is not loaded.
        """
        if name is None:
            targets = list(self._models.values())
            self._pins.clear()
            self._crashed_options.clear()
        else:
            m = self._models.get(name)
            if m is None:
                self.catalog.get(name)  # an unknown name is a 404 of its own
                raise ModelNotFoundError(f"Model '{name}' is not loaded", param="model_name")
            targets = [m]
            self._pins.pop(name, None)
        await asyncio.gather(*(self._evict(m, "manual", explicit=True) for m in targets))
        self._persist()

    async def set_pinned(self, name: str, pinned: bool) -> LiveModel:
        """Pin or unpin a loaded model (no reload). Pinning a downsized model restores it."""
        m = self.get_live(name)
        if m is None or m.state in (ModelState.EVICTING, ModelState.UNLOADED):
            if name not in self.catalog:
                raise ModelNotFoundError(f"Model '{name}' is not in the catalog", param="model")
            raise ModelNotFoundError(
                f"Model '{name}' is not loaded; load it first (pins apply to loaded models)",
                param="model",
            )
        self._apply_pin(m, pinned)
        if pinned and m.state is ModelState.DOWNSIZED:
            self._spawn_background(self._quiet(self._ensure(
                name, pinned=None, options=LoadOptions(), given=frozenset(), reason="pin",
                count_use=False,
            )))
        return m

    async def update_settings(self, updates: Mapping[str, Any]) -> RouterSettings:
        """Validate and apply runtime settings; a lower limit shrinks pools at once."""
        new = self.settings.with_updates(updates)
        self.settings = new
        self.events.emit("config", None, "manual", keys=sorted(updates))
        self._persist()
        await self._shrink_pools()
        self._notify()
        return new

    async def downsize(self, m: LiveModel, reason: str = "idle") -> int | None:
        """Release an idle model's memory but keep its slot, pin and options.

        The backend process is stopped (llama-server's sleep mode keeps ~22% of its memory and
        wakes no faster than a restart; see benchmarks/). Returns the bytes freed, if known.
        """
        if m.pinned or m.is_busy or m.state is not ModelState.READY or m.backend is None:
            return None
        await self._run_transition(m, "downsize", self._downsize_task(m, reason))
        return m.memory_freed_bytes

    async def evict(self, m: LiveModel, reason: str) -> None:
        """Automatic eviction (idle, pressure): never a pinned or busy model."""
        if m.pinned or m.is_busy or m.state not in (ModelState.READY, ModelState.DOWNSIZED):
            return
        await self._evict(m, reason)

    # ------------------------------------------------------------------ the core loop
    async def _ensure(
        self,
        name: str,
        *,
        pinned: bool | None,
        options: LoadOptions,
        given: frozenset[str],
        reason: str,
        count_use: bool = True,
    ) -> LiveModel:
        spec = self.catalog.get(name)
        while True:
            self._check_open()
            m = self._models.get(name)
            if m is not None and m.backend is not None and m.backend.exited.done():
                self._on_backend_exit(m, m.backend)
                if m.backend is not None:
                    # Not a crash: a stop we asked for (evict, unload, kill_hung) has reaped
                    # the process but not returned yet. Wait for it; looping at once never
                    # yielded and spun the event loop forever.
                    await self._wait_change()
                continue
            if m is None:
                self._guard.check(name)
                m = self._new_entry(spec, options, given, pinned)
                await self._await_transition(
                    m, self._start_transition(m, "load", self._load_task(m, reason))
                )
                continue
            if name in self._transitions:
                await self._await_transition(m, self._transitions[name][1])
                continue
            if m.state is ModelState.DOWNSIZED:
                self._guard.check(name)
                await self._await_transition(
                    m, self._start_transition(m, "restore", self._restore_task(m, "restore", reason))
                )
                continue
            if m.state not in SERVING:
                await self._wait_change()
                continue
            merged = m.options.merged(options, given)
            if merged.process_key() != m.options.process_key():
                m.options = merged
                await self._await_transition(
                    m, self._start_transition(m, "reload", self._reload_task(m))
                )
                continue
            m.options = merged
            if pinned is not None:
                self._apply_pin(m, pinned)
            if count_use:
                m.touch()
            return m

    def _new_entry(
        self, spec: ModelSpec, options: LoadOptions, given: frozenset[str], pinned: bool | None
    ) -> LiveModel:
        base = self._crashed_options.pop(spec.name, LoadOptions()).merged(options, given)
        m = LiveModel(spec=spec, options=base)
        m.pinned = pinned if pinned is not None else self._pins.get(spec.name, False)
        if pinned is not None:
            self._remember_pin(spec.name, pinned)
        self._models[spec.name] = m
        return m

    async def _await_transition(self, m: LiveModel, task: asyncio.Task[None]) -> None:
        """Wait for ``task``; a failed *load* fails every waiter, other outcomes re-loop.

        While waiting the model counts as busy, so that nobody evicts it between the end of
        its load and the moment the waiters take their lease.
        """
        kind = next((k for k, t in self._transitions.values() if t is task), None)
        m.waiters += 1
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not self._closing:
                return
            raise
        except LemonadeError:
            if kind in ("evict", "downsize"):
                return
            raise
        finally:
            m.waiters -= 1
            self._notify()

    def _start_transition(
        self, m: LiveModel, kind: str, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        async def tracked() -> None:
            try:
                await coro
            finally:
                # Leave _transitions in the very step the task finishes. Removed only by the
                # done-callback (a later loop step), a finished task stayed listed meanwhile, and
                # `_evict`/`_ensure` awaiting it looped without ever yielding: the router's loop
                # hung for good (tests/reliability/test_concurrency.py, random operations).
                if self._transitions.get(m.name, (None, None))[1] is asyncio.current_task():
                    del self._transitions[m.name]

        task = asyncio.ensure_future(tracked())
        self._transitions[m.name] = (kind, task)

        def done(t: asyncio.Task[None]) -> None:
            if self._transitions.get(m.name, (None, None))[1] is t:
                del self._transitions[m.name]
            if not t.cancelled():
                t.exception()  # retrieved here; waiters re-raise their own copy
            self._notify()

        task.add_done_callback(done)
        return task

    async def _run_transition(
        self, m: LiveModel, kind: str, coro: Coroutine[Any, Any, None]
    ) -> None:
        current = self._transitions.get(m.name)
        if current is not None:
            coro.close()
            await asyncio.shield(current[1])
            return
        await asyncio.shield(self._start_transition(m, kind, coro))

    # ------------------------------------------------------------------ transitions
    async def _load_task(self, m: LiveModel, reason: str) -> None:
        try:
            # Checked before admission: a load that cannot even start must not cost another
            # model its slot (a missing file or engine used to evict the pool's LRU model first).
            self._check_weights(m)
            find_llama_server(self._llama_server_path)
            await self._admit(m)
            backend = await self._start_with_retry(m)
        except BaseException as exc:
            if self._models.get(m.name) is m:
                del self._models[m.name]
            m.state = ModelState.UNLOADED
            if isinstance(exc, LemonadeError) and not isinstance(exc, SlotsPinnedError):
                self.events.emit("load_failed", m.name, reason, error=exc.message[:500])
            raise
        self._install(m, backend)
        m.touch()
        self.events.emit(
            "reload" if reason in ("crash", "restore") else "load", m.name, reason,
            load_duration_ms=round(m.load_duration_ms, 1), pinned=m.pinned,
        )
        self._persist()

    async def _restore_task(
        self, m: LiveModel, kind: str = "restore", reason: str = "request"
    ) -> None:
        """Start a new backend for ``m`` in its slot (a downsized model, or a reload)."""
        m.state = ModelState.LOADING
        try:
            backend = await self._start_with_retry(m)
        except BaseException:
            if self._models.get(m.name) is m:
                del self._models[m.name]
            m.state = ModelState.UNLOADED
            self._persist()
            raise
        self._install(m, backend)
        self.events.emit(kind, m.name, reason, load_duration_ms=round(m.load_duration_ms, 1),
                         pinned=m.pinned)

    async def _reload_task(self, m: LiveModel) -> None:
        """Option change: new process in the same slot, pin kept."""
        await self._drain(m)
        m.state = ModelState.LOADING
        old, m.backend = m.backend, None
        if old is not None:
            await old.stop()
        # A "reload" event, not "restore": nothing was downsized, the options changed.
        await self._restore_task(m, "reload", "options")

    async def _downsize_task(self, m: LiveModel, reason: str) -> None:
        if m.pinned or m.is_busy or m.backend is None or m.state is not ModelState.READY:
            return
        m.state = ModelState.DOWNSIZING
        pid = m.backend.pid
        sample = await self.memory.sample()  # measure right before: report what is really freed
        if m.backend is None:
            # It crashed while we measured. _on_backend_exit left the entry to this running
            # transition; remove it as it would have, or the model stayed wedged in UNLOADED
            # and every later request for it waited forever.
            if self._models.get(m.name) is m:
                del self._models[m.name]
            return
        before = sample.per_pid.get(pid) if pid is not None else None
        old, m.backend = m.backend, None
        await old.stop()
        m.state = ModelState.DOWNSIZED
        m.memory_freed_bytes = before
        m.memory_bytes = 0
        self.events.emit("downsize", m.name, reason, memory_before=before, memory_after=0)

    async def _admit(self, m: LiveModel) -> None:
        """Wait until ``m`` has a slot in its pool, evicting LRU unpinned models for it."""
        while True:
            self._check_open()
            members = [x for x in pool(self._models.values(), m.type) if x is not m]
            decision = admission(members, self.settings.max_loaded_models)
            if decision.admit:
                m.admitted = True
                self._notify()
                return
            if decision.all_pinned:
                raise SlotsPinnedError(m.type, m.name)
            if decision.victim is not None:
                await self._evict(decision.victim, "lru")
                continue
            await self._wait_change()

    @staticmethod
    def _check_weights(m: LiveModel) -> None:
        """Raise ModelNotFoundError (404, no retry: rule 7) when the weights file is gone."""
        if not m.spec.checkpoint or not os.path.isfile(m.spec.checkpoint):
            raise ModelNotFoundError(
                f"The weights file of '{m.name}' ({m.spec.checkpoint or 'not installed'}) "
                "does not exist", param="model",
            )

    async def _start_with_retry(self, m: LiveModel) -> Backend:
        """Start a backend; on failure evict every unpinned idle model and retry once."""
        self._check_weights(m)  # again: restores and reloads come here without _load_task
        engine = LlamaCppEngine(
            find_llama_server(self._llama_server_path), threads=self.settings.backend_threads
        )
        try:
            return await self._start_backend(m, engine)
        except ModelLoadError as first:
            self._guard.failure(m.name, first.message)
            log.warning("Load of %s failed, retrying once: %s", m.name, first.message)
            victims = [
                x for x in self._models.values()
                if x is not m and x.admitted and not x.pinned and not x.is_busy
                and x.state in (ModelState.READY, ModelState.DOWNSIZED)
            ]
            await asyncio.gather(*(self._evict(x, "retry") for x in victims))
            try:
                return await self._start_backend(m, engine)
            except ModelLoadError as second:
                self._guard.failure(m.name, second.message)
                raise

    async def _start_backend(self, m: LiveModel, engine: LlamaCppEngine) -> Backend:
        backend = Backend(
            engine, m.spec, m.options, http=self.http, log_dir=self._log_dir,
            ready_timeout_s=self.settings.ready_timeout_s,
            stop_grace_s=self.settings.stop_grace_s,
        )
        try:
            await backend.start()
        except BaseException:
            await backend.stop()
            raise
        return backend

    def _install(self, m: LiveModel, backend: Backend) -> None:
        m.backend = backend
        m.load_duration_ms = backend.load_duration_ms
        m.memory_bytes = None
        m.state = ModelState.READY
        backend.exited.add_done_callback(lambda _f: self._on_backend_exit(m, backend))
        self._notify()

    async def _evict(self, m: LiveModel, reason: str, *, explicit: bool = False) -> None:
        # A load or restore in progress finishes first; then the eviction is single-flight.
        while (current := self._transitions.get(m.name)) is not None and current[0] != "evict":
            with contextlib.suppress(LemonadeError):
                await asyncio.shield(current[1])
        if self._models.get(m.name) is not m:
            return
        await self._run_transition(m, "evict", self._evict_task(m, reason, explicit))

    async def _evict_task(self, m: LiveModel, reason: str, explicit: bool) -> None:
        if not explicit and (m.pinned or m.state not in (
            ModelState.READY, ModelState.DOWNSIZED, ModelState.IN_USE
        )):
            return
        if not explicit and reason in ("idle", "pressure") and m.is_busy:
            return  # a request arrived before the eviction committed: it rescues the model
        m.state = ModelState.EVICTING
        self._notify()
        await self._drain(m)
        before = m.memory_bytes
        if m.backend is not None:
            await m.backend.stop()
        m.backend = None
        if self._models.get(m.name) is m:
            del self._models[m.name]
        m.state = ModelState.UNLOADED
        kind = "unload" if explicit else "evict"
        self.events.emit(kind, m.name, reason, memory_before=before, memory_after=0)
        self._persist()

    async def _drain(self, m: LiveModel) -> None:
        """Wait until no request is in flight on ``m`` (rule 3: never evict a busy model)."""
        while m.in_flight > 0:
            await self._wait_change()

    async def _shrink_pools(self) -> None:
        slots = self.settings.max_loaded_models
        victims = []
        for model_type in {m.type for m in self.live_models()}:
            victims += shrink_victims(pool(self._models.values(), model_type), slots)
        await asyncio.gather(*(self._evict(v, "lru") for v in victims))

    # ------------------------------------------------------------------ pins
    def _apply_pin(self, m: LiveModel, pinned: bool) -> None:
        self._remember_pin(m.name, pinned)
        if m.pinned != pinned:
            m.pinned = pinned
            self.events.emit("pin" if pinned else "unpin", m.name, "manual")
            self._notify()
        self._persist()

    def _remember_pin(self, name: str, pinned: bool) -> None:
        if pinned:
            self._pins[name] = True
        else:
            self._pins.pop(name, None)

    # ------------------------------------------------------------------ crashes
    def _on_backend_exit(self, m: LiveModel, backend: Backend, *, forced: bool = False) -> None:
        """The backend of ``m`` exited: if we did not ask for it, it is a crash.

        Idempotent: only the first call for the current backend acts. The model leaves its
        pool; a pinned one is reloaded at once (the pin is remembered), others on their next
        request.
        """
        if self._closing or m.backend is not backend:
            return
        if backend.stop_requested and not forced:
            return
        code = backend.exited.result() if backend.exited.done() else None
        uptime = time.time() - backend.started_at
        if uptime >= STABLE_UPTIME_S:
            self._guard.success(m.name)
        self._guard.failure(m.name, f"backend exited with code {code}")
        m.backend = None
        m.state = ModelState.UNLOADED
        if self._models.get(m.name) is m and m.name not in self._transitions:
            del self._models[m.name]
            self._crashed_options[m.name] = m.options
        self.events.emit("crash", m.name, "crash", exit_code=code, pid=backend.pid,
                         pinned=m.pinned)
        self._notify()
        if m.pinned:
            self._spawn_background(self._keep_pinned_loaded(m.name, m.options))

    async def _keep_pinned_loaded(self, name: str, options: LoadOptions) -> None:
        """Reload a crashed pinned model, waiting out crash-loop cooldowns in between.

        A pin means "keep this loaded": when the model crash-loops into a cooldown it is tried
        again once the cooldown ends (one try per cooldown, and those double up to their cap,
        so this is no restart storm). It stops once the model is live, unpinned or unloaded,
        on any other error (its next request tries again), or when the router stops.
        """
        while not self._closing and self._pins.get(name) and self.get_live(name) is None:
            try:
                # Every option, not only the process ones: the reloaded model must keep its
                # per-model eviction settings too (they would silently fall back to the
                # global ones once the model is unpinned).
                await self._ensure(
                    name, pinned=None, options=options,
                    given=frozenset(LoadOptions.__dataclass_fields__), reason="crash",
                    count_use=False,
                )
            except CoolingDownError as exc:
                await asyncio.sleep(exc.retry_after_s)
            except ModelLoadError:
                continue  # counted by the guard: the next turn is refused into a cooldown
            except LemonadeError as exc:
                log.warning("Reload of pinned %s failed: %s", name, exc.message)
                return

    # ------------------------------------------------------------------ memory
    def _backend_pids(self) -> list[int]:
        return [m.backend.pid for m in self._models.values()
                if m.backend is not None and m.backend.pid is not None]

    def _apply_memory_sample(self, sample: MemorySample) -> None:
        """Attribute a memory sample to the live models by backend pid."""
        for m in self._models.values():
            pid = m.backend.pid if m.backend is not None else None
            if pid is not None and pid in sample.per_pid:
                m.memory_bytes = sample.per_pid[pid]
                m.device = sample.device_of_pid.get(pid, "cpu")

    # ------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._closing:
            raise BackendShutdownError("The lemonade router is shutting down")
        if not self._started:
            raise RuntimeError("Router.start() has not been awaited")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, timeout: float = 0.5) -> None:
        event = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _spawn_background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
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
        if self._closing:
            return
        snapshot = {
            "pins": dict(self._pins),
            "loaded": sorted(m.name for m in self.live_models()),
            "settings": {
                k: getattr(self.settings, k)
                for k in ("max_loaded_models", "auto_evict", "auto_evict_threshold_pct",
                          "restore_on_start")
            },
        }
        self._store.save(snapshot)

    def replace_settings(self, **changes: Any) -> None:
        """Start-up only: set non-runtime settings (used by the server layer and tests)."""
        self.settings = replace(self.settings, **changes)
        self._guard = CrashLoopGuard(
            self.settings.crash_loop_threshold,
            self.settings.crash_cooldown_s,
            self.settings.crash_cooldown_max_s,
        )
