"""DESIGN.md is held to the code.

* Every `Class.method`, `module.function` and `_private` it cites exists.
* Every path it cites (``core/effects.py``, ``server/base.LemonadeHandler.write_error``,
  ``tests/unit/test_decisions.py``) exists, down to the attribute after a module.
* Every part the composition roots build (``Router.__init__``, ``ModelTable.__init__``) is
  named in it, so a new part cannot join the router unseen.
* The table's parts import each other only in the order it draws.
* The one writer of a model's record that its table of owners names is the one module that
  ``tests/test_single_writer.py`` lets write.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import lemonade_jupyter
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
from tests.test_single_writer import OWNERS

DOC = Path(core.__file__).parent / "DESIGN.md"
PACKAGE = Path(lemonade_jupyter.__file__).parent
REPO = PACKAGE.parent
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
#: Where a cited path starts: package folders, or the repository's own.
PATH_ROOTS = {"core": PACKAGE / "core", "server": PACKAGE / "server",
              "kernel": PACKAGE / "kernel", "engines": PACKAGE / "core" / "engines",
              "tests": REPO / "tests", "docs": REPO / "docs", "benchmarks": REPO / "benchmarks",
              "lemonade_jupyter": PACKAGE}


def cited() -> list[str]:
    names = re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", DOC.read_text())
    return sorted({n for n in names if "." in n or n.startswith("_")})


def cited_paths() -> list[str]:
    found = re.findall(r"`((?:%s)/[\w./]*)`" % "|".join(PATH_ROOTS), DOC.read_text())
    return sorted(set(found))


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


def resolve_path(cited_path: str) -> bool:
    """Whether ``cited_path`` (a file, a folder, or ``folder/module.attr...``) exists."""
    top, _, rest = cited_path.partition("/")
    path = PATH_ROOTS[top] / rest
    if cited_path.endswith("/") or path.exists():
        return path.exists()
    module_path, *attrs = rest.split(".")
    if not (PATH_ROOTS[top] / f"{module_path}.py").is_file():
        return False
    dotted = (PATH_ROOTS[top] / module_path).relative_to(REPO).as_posix().replace("/", ".")
    obj = importlib.import_module(dotted)
    for attr in attrs:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


@pytest.mark.parametrize("cited_path", cited_paths())
def test_design_doc_paths_exist(cited_path: str) -> None:
    assert resolve_path(cited_path), f"DESIGN.md cites {cited_path}, which does not exist"


def test_design_doc_path_check_sees_a_missing_file_and_attribute() -> None:
    assert resolve_path("core/model_records.py") and resolve_path("server/base.LemonadeHandler")
    assert not resolve_path("core/router_effects.py")
    assert not resolve_path("server/base.LemonadeHandler.no_such_method")


def built_parts(function: object) -> set[str]:
    """The core classes that ``function`` constructs (``Name(...)`` calls of CamelCase names
    that its module imported from the core)."""
    module = inspect.getmodule(function)
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            obj = getattr(module, node.func.id, None)
            if inspect.isclass(obj) and obj.__module__.startswith("lemonade_jupyter.core."):
                found.add(node.func.id)
    return found


@pytest.mark.parametrize("root", [router.Router.__init__, model_table.ModelTable.__init__],
                         ids=["Router", "ModelTable"])
def test_design_doc_names_every_part_the_composition_roots_build(root: object) -> None:
    parts = built_parts(root)
    assert "ModelTable" in parts or "ModelRecords" in parts  # the check sees the parts
    text = DOC.read_text()
    missing = sorted(p for p in parts if not re.search(rf"\b{p}\b", text))
    assert missing == [], f"DESIGN.md does not name these parts: {missing}"


def test_design_doc_one_writer_is_the_single_writer_tests_owner() -> None:
    row = next(line for line in DOC.read_text().splitlines()
               if line.startswith("| every field of a model's record"))
    owner = re.findall(r"`(\w+)`", row.split("|")[2])[0]
    module = NAMESPACES[owner].__module__
    assert OWNERS == {module.removeprefix("lemonade_jupyter.").replace(".", "/") + ".py"}


def core_imports(module: str) -> set[str]:
    """The core modules that ``core/<module>.py`` imports (``from .x import ...``)."""
    tree = ast.parse((PACKAGE / "core" / f"{module}.py").read_text())
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


def test_design_doc_the_tables_parts_import_only_downwards() -> None:
    chain = re.search(r"`(\w+)` → `(\w+)` → `(\w+)` → `(\w+)`", DOC.read_text())
    assert chain is not None, "DESIGN.md no longer draws the table's chain of parts"
    order = list(chain.groups())
    assert order[0] == "model_table"
    upward = sorted(f"{low} -> {high}" for i, low in enumerate(order)
                    for high in order[:i] if high in core_imports(low))
    assert upward == [], f"the table's parts import upwards: {upward}"
