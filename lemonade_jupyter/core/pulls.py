"""Pulls in flight: one download per checkpoint, shared by everyone who asks, off the loop.

A pull runs :func:`.hub_fetch.fetch` on a daemon thread of its own (a download can take an hour; it
must neither hold the event loop nor a worker of the loop's default executor, and must not keep
the process alive at exit). The thread hands its progress to the loop with
``call_soon_threadsafe``; everything else here lives on the loop. Asking for a checkpoint that
is already being pulled joins that pull (single-flight). Cancelling it answers everyone who
waits on it at once and hangs up the download: its sockets are shut down, so the thread's
blocked read returns within milliseconds and removes the partial file.

Progress is a snapshot per file (bytes done and total) that only grows, so a client sees a
monotonic bar even when a resume makes the library fetch bytes again. The router's event log
gets ``pull`` events: ``start``, ``progress`` (at most every half second), then ``complete``,
``error`` or ``cancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import LemonadeError, PullCancelledError
from . import hub_fetch
from .hub import HubEnv, HubRef, LocalModel, PullPlan
from .hub_fetch import Checks, FileProgress
from .hub_transfer import Hangup

log = logging.getLogger(__name__)

#: Seconds between two ``progress`` events of one pull on the router's event log.
EVENT_INTERVAL_S = 0.5

Emit = Callable[..., Any]
Listener = Callable[[dict[str, Any]], None]


def job_key(ref: HubRef, mmproj: str | None, checked: bool = False) -> str:
    """One job per checkpoint; a checked (curated) pull never joins an unchecked one."""
    return f"{ref.key}|{(mmproj or '').lower()}|{'checked' if checked else ''}"


class PullJob:
    """One download in flight and the clients waiting for it. Lives on the loop."""

    def __init__(self, ref: HubRef, mmproj: str | None, name: str, emit: Emit,
                 loop: asyncio.AbstractEventLoop, checks: Checks | None = None) -> None:
        self.ref, self.mmproj, self.checks = ref, mmproj, checks
        self.key = job_key(ref, mmproj, checks is not None)
        self.names = {name}
        self.future: asyncio.Future[LocalModel] = loop.create_future()
        self.cancelled = Hangup()
        self.started = time.monotonic()
        self._name = name
        self._emit = emit
        self._loop = loop
        self._files: list[dict[str, Any]] = []
        self._current = 0
        self._listeners: list[Listener] = []
        self._last_event = 0.0

    @property
    def checkpoint(self) -> str:
        return str(self.ref)

    @property
    def done(self) -> bool:
        return self.future.done()

    # -- what clients see -------------------------------------------------------------------
    def progress(self) -> dict[str, Any] | None:
        """The progress so far (None before the first file starts)."""
        if not self._files:
            return None
        totals = [f["bytes_total"] for f in self._files]
        done = sum(f["bytes_downloaded"] for f in self._files)
        total = None if any(t is None for t in totals) else sum(totals)
        current = self._files[self._current]
        return {
            "checkpoint": self.checkpoint,
            "file": current["file"],
            "file_index": self._current + 1,
            "total_files": len(self._files),
            "file_bytes_downloaded": current["bytes_downloaded"],
            "file_bytes_total": current["bytes_total"],
            "bytes_downloaded": done,
            "bytes_total": total,
            "percent": round(100.0 * done / total, 1) if total else None,
            "files": [dict(f) for f in self._files],
        }

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every new progress snapshot; returns the unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def cancel(self) -> None:
        """Answer every waiter with PullCancelledError now and hang up the download.

        The thread sees its sockets shut down, removes its partial file and ends on its own;
        what it reports afterwards is ignored (the future is done)."""
        self.cancelled.set()
        self._fail(PullCancelledError(f"The pull of {self.checkpoint} was cancelled"))

    async def wait(self) -> LocalModel:
        """The local files once the pull is done (one waiter leaving does not cancel it)."""
        return await asyncio.shield(self.future)

    # -- fed by the download thread, on the loop --------------------------------------------
    def _planned(self, plan: PullPlan) -> None:
        if self.future.done():
            return  # cancelled: what the thread says while it winds down is old news
        self._files = [{"file": f.path, "bytes_downloaded": 0, "bytes_total": f.size}
                       for f in plan.all_files]

    def _progress(self, p: FileProgress) -> None:
        if self.future.done():
            return  # cancelled: no progress event may follow the ``cancelled`` one
        while len(self._files) <= p.index:
            self._files.append({"file": p.path, "bytes_downloaded": 0, "bytes_total": p.total})
        entry = self._files[p.index]
        entry["bytes_downloaded"] = max(entry["bytes_downloaded"], p.done)
        if p.total is not None:
            entry["bytes_total"] = p.total
        self._current = p.index
        snapshot = self.progress()
        assert snapshot is not None
        for listener in list(self._listeners):
            listener(snapshot)
        now = time.monotonic()
        file_done = p.total is not None and p.done >= p.total
        if now - self._last_event >= EVENT_INTERVAL_S or file_done:
            self._last_event = now
            self._event("progress", **{k: v for k, v in snapshot.items() if k != "files"})

    def _finish(self, local: LocalModel) -> None:
        if self.future.done():
            return
        self._event("complete", checkpoint=self.checkpoint, files=list(local.all_files),
                    bytes_total=local.size, seconds=round(time.monotonic() - self.started, 3))
        self.future.set_result(local)

    def _fail(self, exc: BaseException) -> None:
        if self.future.done():
            return
        if isinstance(exc, PullCancelledError):
            self._event("cancelled", checkpoint=self.checkpoint)
        else:
            message = exc.message if isinstance(exc, LemonadeError) else str(exc)
            self._event("error", checkpoint=self.checkpoint, error=message[:500],
                        code=getattr(exc, "code", None))
        self.future.set_exception(exc)
        self.future.exception()  # retrieved: a pull nobody waits for is not an unhandled error

    def _event(self, reason: str, **detail: Any) -> None:
        try:
            self._emit("pull", self._name, reason, **detail)
        except Exception:  # noqa: BLE001 - an event sink must never break a pull
            log.exception("Could not record a pull event")


class PullManager:
    """The pulls in flight, by checkpoint. Owned by the loop that calls :meth:`start`."""

    def __init__(self) -> None:
        self._jobs: dict[str, PullJob] = {}

    def jobs(self) -> list[PullJob]:
        return [j for j in self._jobs.values() if not j.done]

    def start(self, ref: HubRef, mmproj: str | None, *, name: str, emit: Emit,
              checks: Checks | None = None) -> PullJob:
        """Join the pull of this checkpoint in flight, or start one; never blocks.

        ``checks``: the size and sha256 each file must have (a curated model's)."""
        key = job_key(ref, mmproj, checks is not None)
        job = self._jobs.get(key)
        if job is not None and not job.done and not job.cancelled.is_set():
            job.names.add(name)
            return job
        loop = asyncio.get_running_loop()
        job = PullJob(ref, mmproj, name, emit, loop, checks)
        self._jobs[key] = job
        job._event("start", checkpoint=job.checkpoint)
        job.future.add_done_callback(lambda _f, key=key, job=job: self._forget(key, job))
        env = HubEnv.current()
        threading.Thread(target=self._run, args=(job, env, loop), daemon=True,
                         name=f"lemonade-pull {ref}").start()
        return job

    def cancel(self, *, name: str | None = None, checkpoint: HubRef | None = None,
               ) -> list[PullJob]:
        """Cancel the pulls in flight for a model name or a checkpoint; return them."""
        found = [j for j in self.jobs()
                 if (name is not None and name in j.names)
                 or (checkpoint is not None and j.ref.key == checkpoint.key)]
        for job in found:
            job.cancel()
        return found

    def cancel_all(self) -> list[PullJob]:
        """Cancel every pull in flight (the router stops: a download must not outlive it)."""
        found = self.jobs()
        for job in found:
            job.cancel()
        return found

    def _forget(self, key: str, job: PullJob) -> None:
        if self._jobs.get(key) is job:
            del self._jobs[key]

    @staticmethod
    def _run(job: PullJob, env: HubEnv, loop: asyncio.AbstractEventLoop) -> None:
        def post(callback: Callable[..., None], *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop is closed: the server stopped, stop downloading
                job.cancelled.set()

        try:
            local = hub_fetch.fetch(job.ref, job.mmproj, env,
                                    progress=lambda p: post(job._progress, p),
                                    cancelled=job.cancelled,
                                    planned=lambda plan: post(job._planned, plan),
                                    checks=job.checks)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop's waiters
            post(job._fail, exc)
        else:
            post(job._finish, local)
