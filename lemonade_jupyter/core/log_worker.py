"""Log tails read and redacted in worker processes, so that the server's event loop never waits.

A tail of 10,000 lines is about 1 MiB of text to redact. On the event loop, 50 such requests
(the dashboard's log button, a script) held ``/health`` for seconds. In a worker *thread* the
loop is free but still shares the interpreter lock with the worker, and every time it gives the
lock up for a system call it waits for it again: ``/health`` took some 30 times longer while
tails were read. In a worker *process* it is not slowed at all. ``multiprocessing`` is not used:
its ``spawn`` start imports the program's ``__main__`` again in the worker, and a plain script
that starts an embedded router without a ``__main__`` guard would start a second one there.

A worker is ``python -c`` running :func:`serve` over its stdin and stdout: one request, a JSON
line ``{"path", "tail", "secrets"}``; one answer, a JSON line ``{"offset", "size"}`` followed by
``size`` bytes of server-sent events. Workers are started on demand (at most
:data:`MAX_WORKERS`), kept for the next request, and end when their stdin closes
(:meth:`TailReader.close`), or with the server (the parent-death signal of :mod:`.process`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from .backend_logs import last_lines, redact_lines

#: Worker processes per server.
MAX_WORKERS = 2
#: The largest answer a worker may send: a tail is at most the last MiB of a file, as events.
MAX_ANSWER_BYTES = 8 << 20
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from lemonade_jupyter.core.log_worker import serve; serve(sys.stdin.buffer, "
         "sys.stdout.buffer)")


def log_events(lines: Iterable[str], secrets: list[str]) -> bytes:
    """``lines`` redacted, as ``log`` events of the log stream."""
    return "".join(f"event: log\ndata: {line}\n\n"
                   for line in redact_lines(list(lines), secrets)).encode()


def tail_events(path: Path, tail: int, secrets: list[str]) -> tuple[bytes, int]:
    """The last ``tail`` complete lines of ``path`` as redacted events, and the offset after
    them (see :func:`~.backend_logs.last_lines`)."""
    lines, offset = last_lines(path, tail)
    return log_events(lines, secrets), offset


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: one answer per request line, until its input ends."""
    for line in requests:
        try:
            req = json.loads(line)
            events, offset = tail_events(Path(req["path"]), int(req["tail"]),
                                         [str(s) for s in req["secrets"]])
        except (ValueError, KeyError, TypeError):
            events, offset = b"", 0
        answers.write(json.dumps({"offset": offset, "size": len(events)}).encode() + b"\n")
        answers.write(events)
        answers.flush()


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, path: Path, tail: int, secrets: list[str]) -> tuple[bytes, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"path": str(path), "tail": tail, "secrets": secrets}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        await self.proc.stdin.drain()
        header = json.loads(await self.proc.stdout.readline())
        size = int(header["size"])
        if not 0 <= size <= MAX_ANSWER_BYTES:
            raise ValueError(f"a log worker answered {size} bytes")
        return await self.proc.stdout.readexactly(size), int(header["offset"])

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class TailReader:
    """Reads redacted log tails in up to :data:`MAX_WORKERS` worker processes.

    Owns its workers; used from one event loop (the router's). A worker whose request was
    cancelled or failed is stopped, never reused: its answer may still be on the way.
    """

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self._max = max_workers
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._starting = 0
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False

    async def read(self, path: Path, tail: int, secrets: list[str]) -> tuple[bytes, int]:
        """The redacted events of the last ``tail`` lines of ``path`` and the offset after
        them. Waits for a free worker (starting one if fewer than the maximum run). Raises
        OSError or ValueError when a worker cannot start or fails (it is then replaced)."""
        worker = await self._take()
        try:
            answer = await worker.ask(path, tail, secrets)
        except BaseException:
            self._all.discard(worker)
            worker.proc.kill()
            await worker.close()
            raise
        self._give_back(worker)
        return answer

    async def close(self) -> None:
        """Stop every worker (idempotent)."""
        self._closed = True
        workers, self._all = list(self._all), set()
        await asyncio.gather(*(w.close() for w in workers), *self._closing,
                             return_exceptions=True)

    async def _take(self) -> _Worker:
        if self._closed:
            raise RuntimeError("The log reader was closed")
        if self._idle is None:
            self._idle = asyncio.Queue()
        while True:  # each round returns a worker or drops one that ended while idle
            if self._idle.empty() and len(self._all) + self._starting < self._max:
                self._starting += 1  # counted before the await: others must not start one too
                try:
                    worker = _Worker(await _start_worker())
                finally:
                    self._starting -= 1
                self._all.add(worker)
                return worker
            worker = await self._idle.get()
            if worker.proc.returncode is None:
                return worker
            self._all.discard(worker)

    def _give_back(self, worker: _Worker) -> None:
        if self._closed or self._idle is None:  # closed meanwhile: this one goes too
            self._all.discard(worker)
            closing = asyncio.ensure_future(worker.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            return
        self._idle.put_nowait(worker)


async def _start_worker() -> asyncio.subprocess.Process:
    from .process import parent_death_preexec

    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _BOOT, _PACKAGE_ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, preexec_fn=parent_death_preexec(),
    )
