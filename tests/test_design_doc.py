"""DESIGN.md names real code: every `Class.method`, `module.function` and `_private` it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lemonade_jupyter.core as core
from lemonade_jupyter.core import (
    cooldown, decisions, departures, effects, eviction, fit_admission, gguf_facts,
    housekeeping, launcher, lifecycle, live_model, load_sequence, memory_sources, metrics,
    model_records, model_table, persistence, placement, preferences, remote, remote_metrics,
    remote_spec, request_leases, request_slots, request_stats, router, runtime, supervisor,
    transitions, watchdog,
)
from lemonade_jupyter.core import engines
from lemonade_jupyter.core.engines import lookup
from lemonade_jupyter.core.catalog import Catalog
from lemonade_jupyter.server import base

DOC = Path(core.__file__).parent / "DESIGN.md"
NAMESPACES = {
    "Router": router.Router,
    "ModelTable": model_table.ModelTable,
    "ModelRecords": model_records.ModelRecords,
    "LoadSequence": load_sequence.LoadSequence,
    "Departures": departures.Departures,
    "RequestLeases": request_leases.RequestLeases,
    "RouterRuntime": runtime.RouterRuntime,
    "ModelPreferences": preferences.ModelPreferences,
    "CrashLoopGuard": cooldown.CrashLoopGuard,
    "Transitions": transitions.Transitions,
    "ChangeSignal": lifecycle.ChangeSignal,
    "Launcher": launcher.Launcher,
    "Watchdog": watchdog.Watchdog,
    "LemonadeHandler": base.LemonadeHandler,
    "LiveModel": live_model.LiveModel,
    "Lease": router.Lease,
    "decisions": decisions,
    "eviction": eviction,
    "lifecycle": lifecycle,
    "housekeeping": housekeeping,
    "model_table": model_table,
    "model_records": model_records,
    "load_sequence": load_sequence,
    "departures": departures,
    "request_leases": request_leases,
    "runtime": runtime,
    "transitions": transitions,
    "preferences": preferences,
    "cooldown": cooldown,
    "launcher": launcher,
    "router": router,
    "metrics": metrics,
    "FitAdmission": fit_admission.FitAdmission,
    "placement": placement,
    "gguf_facts": gguf_facts,
    "memory_sources": memory_sources,
    "persistence": persistence,
    "engines": engines,
    "lookup": lookup,
    "RemoteRegistry": remote.RemoteRegistry,
    "remote": remote,
    "remote_spec": remote_spec,
    "remote_metrics": remote_metrics,
    "request_slots": request_slots,
    "RequestStats": request_stats.RequestStats,
    "Supervisor": supervisor.Supervisor,
    "Effects": effects.Effects,
    "effects": effects,
    "fit_admission": fit_admission,
    "supervisor": supervisor,
}


def cited() -> list[str]:
    names = re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", DOC.read_text())
    return sorted({n for n in names if "." in n or n.startswith("_")})


@pytest.mark.parametrize("name", cited())
def test_design_doc_names_exist(name: str) -> None:
    parts = name.split(".")
    if name.endswith((".json", ".md", ".py")):
        return  # a path, not code
    if parts[0] in NAMESPACES:
        obj = NAMESPACES[parts[0]]
        for attr in parts[1:]:
            if attr not in getattr(obj, "__dataclass_fields__", {}):
                obj = getattr(obj, attr)
        return
    if len(parts) == 1:  # a private Router method or attribute
        instance = router.Router(Catalog(None))
        assert hasattr(instance, parts[0]), f"DESIGN.md cites {name}, Router has none"
        return
    if parts[0] in ("server", "core") or name.endswith((".json", ".md", ".py")):
        return  # a path, not code
    pytest.fail(f"DESIGN.md cites {name}: add its namespace to this test or fix the doc")
