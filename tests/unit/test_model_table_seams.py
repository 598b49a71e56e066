"""The model table against its two seams only: an in-memory launcher and a recording
``Effects``, no router. The table decides about its models and reports what it cannot decide:
an exit it did not ask for goes to ``Effects.backend_exited``, a silent backend an explicit
load finds goes to ``Effects.backend_hung``; it never handles a crash itself."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from lemonade_jupyter.core.cooldown import CrashLoopGuard
from lemonade_jupyter.core.events import EventLog
from lemonade_jupyter.core.lifecycle import ModelState
from lemonade_jupyter.core.memory import MemorySample
from lemonade_jupyter.core.model_table import ModelTable
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.preferences import ModelPreferences
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.errors import BackendShutdownError
from tests.fakes.memory_launcher import MemoryLauncher, memory_catalog
from tests.helpers.polling import wait_until


class RecordingEffects:
    """An ``Effects`` that answers from fixed values and records every report."""

    def __init__(self) -> None:
        self.open = True
        self.reports: list[tuple[str, str, object]] = []
        self.persisted = 0
        self._guard = CrashLoopGuard(3, 1.0, 8.0, 60.0)
        self._settings = RouterSettings(max_loaded_models=1)

    def settings(self) -> RouterSettings:
        return self._settings

    def guard(self) -> CrashLoopGuard:
        return self._guard

    def check_open(self) -> None:
        if not self.open:
            raise BackendShutdownError("closed")

    def running(self) -> bool:
        return self.open

    def persist(self) -> None:
        self.persisted += 1

    async def measure(self) -> MemorySample:
        return MemorySample("none", ())

    async def fresh(self, max_age_s: float) -> MemorySample:
        return MemorySample("none", ())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        coro.close()
        self.reports.append(("spawn", "", None))

    def backend_exited(self, m: Any, backend: Any) -> None:
        self.reports.append(("exited", m.name, backend))

    async def backend_hung(self, m: Any, backend: Any) -> None:
        self.reports.append(("hung", m.name, backend))


@pytest.fixture
def parts(tmp_path):
    launcher, effects = MemoryLauncher(), RecordingEffects()
    table = ModelTable(catalog=memory_catalog(tmp_path, ["user.a", "user.b"]),
                       preferences=ModelPreferences(), launcher=launcher, events=EventLog(),
                       effects=effects)
    return table, launcher, effects


async def ensure(table: ModelTable, name: str, *, explicit: bool = False):
    return await table.ensure(name, pinned=None, options=LoadOptions(), given=frozenset(),
                              reason="load" if explicit else "request", explicit=explicit)


async def test_model_table_reports_an_exit_it_did_not_ask_for_and_decides_nothing(parts):
    table, launcher, effects = parts
    m = await ensure(table, "user.a")
    backend = m.backend
    backend.crash(9)
    await wait_until(lambda: effects.reports, 5, "the report of the exit")
    assert effects.reports == [("exited", "user.a", backend)]
    # the table leaves the verdict to the supervisor: the model is still its own entry
    assert table.get("user.a") is m and m.backend is backend
    assert table.remove_crashed(m, backend) and table.get("user.a") is None
    assert not table.remove_crashed(m, backend)  # once only


async def test_model_table_reports_a_silent_backend_on_an_explicit_load(parts):
    table, launcher, effects = parts
    m = await ensure(table, "user.a")
    m.backend.hang()
    effects.reports.clear()

    # One probe, one report; what a report leads to is the supervisor's (here: nothing), and
    # the load does not probe again and again meanwhile.
    assert await asyncio.wait_for(ensure(table, "user.a", explicit=True), 5) is m
    assert effects.reports == [("hung", "user.a", m.backend)]


async def test_model_table_asks_its_effects_for_settings_and_whether_it_is_open(parts):
    table, launcher, effects = parts
    await ensure(table, "user.a")
    await ensure(table, "user.b")  # one slot (the effects' settings): a evicted for b
    assert [m.name for m in table.live()] == ["user.b"]
    assert launcher.backends[0].stop_requested and effects.persisted > 0
    effects.open = False
    with pytest.raises(BackendShutdownError):
        await ensure(table, "user.a")
    assert table.get("user.b").stored_state is ModelState.READY
