"""The seams between the model table and the world: one documented interface each.

:class:`~.model_table.ModelTable` decides about models; what it needs from outside its table
it asks through two interfaces, passed once when it is built, instead of a bag of callables:

* :class:`~.launcher.BackendLauncher`: start a backend for a model (and the checks before
  one). The real one is :class:`~.launcher.Launcher` (``llama-server`` processes); tests use
  an in-memory one (``tests/fakes/memory_launcher.py``), so the table's rules run without
  processes or sleeps.
* :class:`Effects`: everything else the table and the supervisor ask of the router: its
  settings, the crash-loop guard, whether it is open, saving its state, memory samples, a
  background task, and the report of a backend that exited or stopped answering (the
  supervisor's crash policy acts on it). :class:`~.runtime.RouterRuntime` implements it.

Neither interface knows the router, so no core module imports it (``tests/test_core_layering.py``).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from .backend import Backend
from .cooldown import CrashLoopGuard
from .memory import MemorySample
from .settings import RouterSettings

if TYPE_CHECKING:
    from .live_model import LiveModel


class Effects(Protocol):
    """What the model table and the supervisor ask of the router."""

    def settings(self) -> RouterSettings:
        """The current settings (replaced as a whole, never mutated)."""

    def guard(self) -> CrashLoopGuard:
        """The crash-loop guard (rebuilt when its settings change at start-up)."""

    def check_open(self) -> None:
        """Raise BackendShutdownError once the router stops (RuntimeError before it starts)."""

    def running(self) -> bool:
        """Whether the router serves (a crash during shutdown is not reloaded)."""

    def persist(self) -> None:
        """Save the preferences, the loaded set and the settings (a no-op while stopping)."""

    async def measure(self) -> MemorySample:
        """A new memory sample, taken now."""

    async def fresh(self, max_age_s: float) -> MemorySample:
        """A memory sample at most ``max_age_s`` old."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a background task of the router (cancelled when it stops)."""

    def backend_exited(self, m: LiveModel, backend: Backend) -> None:
        """``m``'s backend exited: the supervisor decides whether it was a crash."""

    async def backend_hung(self, m: LiveModel, backend: Backend) -> None:
        """``m``'s backend does not answer: the supervisor kills it (the crash path)."""
