"""Crash-loop guard: a model that failed N times in a row waits before the next try.

Without it a backend that dies at start (a corrupt GGUF, a missing library) would be restarted
by every request and by the watchdog, a restart storm that starves everything else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import CoolingDownError


@dataclass
class _Record:
    failures: int = 0
    until: float = 0.0
    reason: str = ""


class CrashLoopGuard:
    """Counts consecutive start failures and crashes per model; grants a doubling cooldown."""

    def __init__(self, threshold: int = 2, base_s: float = 5.0, cap_s: float = 300.0) -> None:
        self.threshold = threshold
        self.base_s = base_s
        self.cap_s = cap_s
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
        """Count one failed start or crash; from the N-th in a row on, start a cooldown."""
        record = self._records.setdefault(name, _Record())
        record.failures += 1
        record.reason = reason.splitlines()[-1][:300] if reason else ""
        if record.failures >= self.threshold:
            exponent = record.failures - self.threshold
            record.until = time.monotonic() + min(self.base_s * (2 ** exponent), self.cap_s)

    def success(self, name: str) -> None:
        """The model served a request or ran stably: the streak is over.

        A backend that merely reached READY does not end the streak, or one that dies right
        after its start would be restarted forever.
        """
        self._records.pop(name, None)

    def forget(self, name: str) -> None:
        self._records.pop(name, None)
