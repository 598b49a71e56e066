"""Crash-loop guard: a start limit per model, as a supervisor keeps one.

Without it a backend that dies at start (a corrupt GGUF, a missing library, the OOM killer at
every start) would be restarted by every request and by the watchdog: a restart storm that
starves everything else. It works like systemd's start limit and Kubernetes' back-off:

* What counts: a start that failed to become ready, and a death shortly after a start
  (before the backend served any request and before ``STABLE_UPTIME_S`` of uptime). A kill of
  a backend that ran and served fine is not a crash loop and does not count.
* When ``threshold`` of those fall within ``window_s``, the model cools down for
  ``base_s``, doubling with each further cooldown up to ``cap_s``.
* A backend that served a request, or stayed up ``STABLE_UPTIME_S``, resets the record.
* Only the *automatic* paths ask :meth:`CrashLoopGuard.check` (auto-load on a request, the
  watchdog's and the pin keeper's reloads, restore at start): they get 503 + ``Retry-After``.
  An explicit ``/load`` is never refused: it is tried once, now, and a failure is reported
  with the engine's own reason (and counts like any other).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from ..errors import CoolingDownError

#: A backend up this long ran fine: its death is not part of a crash loop.
STABLE_UPTIME_S = 10.0


@dataclass
class _Record:
    failures: collections.deque[float] = field(default_factory=collections.deque)
    cooldowns: int = 0  # granted since the last reset; each doubles the next one
    until: float = 0.0
    reason: str = ""


class CrashLoopGuard:
    """Counts failed starts and early deaths per model within a window; grants cooldowns.

    Owns ``_records`` (model name → failures, cooldown); written on the router's loop only.
    """

    def __init__(self, threshold: int = 2, base_s: float = 5.0, cap_s: float = 300.0,
                 window_s: float = 60.0) -> None:
        self.threshold = threshold
        self.base_s = base_s
        self.cap_s = cap_s
        self.window_s = window_s
        self._records: dict[str, _Record] = {}

    def check(self, name: str) -> None:
        """Raise CoolingDownError (503 + Retry-After) while ``name`` is cooling down."""
        record = self._records.get(name)
        if record is None:
            return
        left = record.until - time.monotonic()
        if left > 0:
            raise CoolingDownError(name, left, record.reason)

    def cooling_down(self, name: str) -> bool:
        record = self._records.get(name)
        return bool(record and record.until > time.monotonic())

    def failure(self, name: str, reason: str) -> None:
        """Count one failed start or early death; enough in the window start a cooldown."""
        now = time.monotonic()
        record = self._records.setdefault(name, _Record())
        record.failures.append(now)
        while record.failures and now - record.failures[0] > self.window_s:
            record.failures.popleft()
        record.reason = reason.splitlines()[-1][:300] if reason else ""
        if len(record.failures) >= self.threshold:
            seconds = min(self.base_s * (2 ** record.cooldowns), self.cap_s)
            record.cooldowns += 1
            record.until = now + seconds

    def exited(self, name: str, *, uptime_s: float, served: bool, reason: str) -> None:
        """A backend died unasked: an early death counts, one that ran fine resets."""
        if served or uptime_s >= STABLE_UPTIME_S:
            self.success(name)
        else:
            self.failure(name, reason)

    def success(self, name: str) -> None:
        """The model served a request or ran stably: the record is cleared.

        A backend that merely reached READY does not clear it, or one that dies right after
        its start would be restarted forever.
        """
        self._records.pop(name, None)

    def forget(self, name: str) -> None:
        self._records.pop(name, None)
