"""The core's structure holds by code, not discipline: only the composition root knows the
router, and no core module imports another one that (directly or not) imports it back.

Every import counts, those under ``TYPE_CHECKING`` and inside functions included: a circle
hidden behind them is still a circle for whoever reads the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lemonade_jupyter.core as core

CORE = Path(core.__file__).parent
PACKAGE = "lemonade_jupyter.core"


def module_name(path: Path) -> str:
    rel = path.relative_to(CORE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts]) if parts else PACKAGE


def core_imports(path: Path) -> set[str]:
    """The core modules that ``path`` imports, resolved to full names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            submodules = [f"{root}.{a.name}" for a in node.names]
            targets = [t for t in submodules if t in MODULES] or [root]
        else:
            continue
        found |= {t for t in targets if t in MODULES}
    return found - {name}


MODULES = {module_name(p) for p in CORE.rglob("*.py")}
GRAPH = {module_name(p): core_imports(p) for p in CORE.rglob("*.py")}


def test_core_layering_only_the_composition_root_imports_the_router():
    importers = sorted(m for m, deps in GRAPH.items() if f"{PACKAGE}.router" in deps)
    assert importers == [], f"modules that reach back into the router: {importers}"


def test_core_layering_has_no_import_circle():
    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in sorted(GRAPH.get(node, ())):
                if dep == start:
                    return path + [dep]
                if dep not in path:
                    stack.append((dep, path + [dep]))
        return None

    circles = [c for m in sorted(GRAPH) if (c := circle_from(m))]
    assert not circles, " ; ".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("source,expected", [
    ("from .router import Router", {"lemonade_jupyter.core.router"}),
    ("from . import router", {"lemonade_jupyter.core.router"}),
    ("if TYPE_CHECKING:\n    from .router import Router", {"lemonade_jupyter.core.router"}),
    ("def f():\n    from lemonade_jupyter.core.router import Router",
     {"lemonade_jupyter.core.router"}),
    ("from ..errors import LemonadeError", set()),
])
def test_core_layering_sees_every_kind_of_import(source, expected, monkeypatch):
    fake = CORE / "watchdog.py"
    monkeypatch.setattr(Path, "read_text", lambda self: source if self == fake else "")
    assert core_imports(fake) == expected
