"""The package's structure holds by code, not discipline (see ``core/DESIGN.md``):

* no import circle anywhere in ``lemonade_jupyter``;
* ``core/`` imports nothing from ``server/`` or ``kernel/``, and only the composition root
  (``core/router.py``) knows the router;
* ``kernel/`` is an HTTP client of the server: it imports its own modules, ``errors`` and
  ``api_paths``, and one module of the server, ``server/embedded.py`` (the embedded server it
  starts when there is no Jupyter server), only inside a function, so that importing the kernel
  side never imports the server or the core.

Every import counts, those under ``TYPE_CHECKING`` and inside functions included: a circle
hidden behind them is still a circle for whoever reads the code. Importing a module imports its
packages first, so ``a.b`` needs ``a`` anyway: an import counts as a dependency on a package's
``__init__`` only when it takes a name defined there (``from . import NAME`` that is no module).
"""

from __future__ import annotations

import ast
import collections
from dataclasses import dataclass
from pathlib import Path

import pytest

import lemonade_jupyter

ROOT = Path(lemonade_jupyter.__file__).parent
PACKAGE = "lemonade_jupyter"
CORE = f"{PACKAGE}.core"
SERVER = f"{PACKAGE}.server"
KERNEL = f"{PACKAGE}.kernel"
#: What kernel modules may import from the package besides ``kernel`` itself, and whether only
#: inside a function.
KERNEL_MAY_IMPORT = {f"{PACKAGE}.errors": False, f"{PACKAGE}.api_paths": False,
                     f"{SERVER}.embedded": True}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


@dataclass(frozen=True)
class Import:
    """One import of a package module: by whom, of what, and whether inside a function."""

    source: str
    target: str
    lazy: bool


def _functions_and_nodes(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """Every node with whether it sits inside a function."""
    found: list[tuple[ast.AST, bool]] = []
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, lazy = stack.pop()
        found.append((node, lazy))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))
    return found


def imports_of(name: str, source: str, *, is_package: bool = False) -> set[Import]:
    """The package modules that module ``name`` (its code: ``source``) imports."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node, lazy in _functions_and_nodes(ast.parse(source)):
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
            targets = [t for t in submodules if t in MODULES]
            if len(targets) < len(submodules):  # names defined in ``root`` itself
                targets.append(root)
        else:
            continue
        found |= {Import(name, t, lazy) for t in targets if t in MODULES and t != name}
    return found


IMPORTS = {imp for m, p in MODULES.items()
           for imp in imports_of(m, p.read_text(), is_package=p.name == "__init__.py")}


def graph(imports: set[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in imports:
        edges[imp.source].add(imp.target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The shortest circle through each module that lies on one (a path back to itself)."""
    def circle_from(start: str) -> list[str] | None:
        queue = collections.deque([[start]])
        seen = {start}
        while queue:
            path = queue.popleft()
            for dep in sorted(edges.get(path[-1], ())):
                if dep == start:
                    return path + [dep]
                if dep not in seen:
                    seen.add(dep)
                    queue.append(path + [dep])
        return None

    return [c for m in sorted(edges) if (c := circle_from(m))]


def test_core_layering_no_import_circle_in_the_package():
    found = circles(graph(IMPORTS))
    assert not found, " ; ".join(" -> ".join(c) for c in found)


def test_core_layering_core_imports_neither_server_nor_kernel():
    wrong = sorted(f"{i.source} -> {i.target}" for i in IMPORTS
                   if i.source.startswith(f"{CORE}.") or i.source == CORE
                   if i.target.startswith((f"{SERVER}.", f"{KERNEL}.")) or i.target in (SERVER,
                                                                                       KERNEL))
    assert wrong == []


def test_core_layering_only_the_composition_root_imports_the_router():
    importers = sorted(i.source for i in IMPORTS
                       if i.target == f"{CORE}.router" and i.source.startswith(f"{CORE}."))
    assert importers == [], f"core modules that reach back into the router: {importers}"


def kernel_rule_breaks(imports: set[Import]) -> list[str]:
    """Imports of kernel modules that the kernel rule (module docstring) does not allow."""
    wrong = []
    for imp in sorted(imports, key=lambda i: (i.source, i.target)):
        if not (imp.source == KERNEL or imp.source.startswith(f"{KERNEL}.")):
            continue
        if imp.target == KERNEL or imp.target.startswith(f"{KERNEL}."):
            continue
        lazy_only = KERNEL_MAY_IMPORT.get(imp.target)
        if lazy_only is None:
            wrong.append(f"{imp.source} -> {imp.target}")
        elif lazy_only and not imp.lazy:
            wrong.append(f"{imp.source} -> {imp.target} (at import time)")
    return wrong


def test_core_layering_kernel_imports_only_what_an_http_client_needs():
    assert kernel_rule_breaks(IMPORTS) == []


# ---------------------------------------------------------------------- the checks themselves
@pytest.mark.parametrize("source,expected", [
    ("from .router import Router", {(f"{CORE}.router", False)}),
    ("from . import router", {(f"{CORE}.router", False)}),
    ("if TYPE_CHECKING:\n    from .router import Router", {(f"{CORE}.router", False)}),
    ("def f():\n    from lemonade_jupyter.core.router import Router",
     {(f"{CORE}.router", True)}),
    ("async def f():\n    import lemonade_jupyter.server.proxy", {(f"{SERVER}.proxy", True)}),
    ("from ..errors import LemonadeError", {(f"{PACKAGE}.errors", False)}),
    ("from .. import server", {(SERVER, False)}),
    ("from .. import __version__", {(PACKAGE, False)}),
    ("import json\nfrom typing import Any", set()),
])
def test_core_layering_sees_every_kind_of_import(source, expected):
    found = imports_of(f"{CORE}.watchdog", source)
    assert {(i.target, i.lazy) for i in found} == expected


def test_core_layering_finds_a_circle_through_a_function_level_import():
    added = imports_of(f"{CORE}.remote_spec",
                       "def f():\n    from .remote import RemoteRegistry\n")
    found = circles(graph(IMPORTS | added))
    assert [f"{CORE}.remote_spec", f"{CORE}.remote", f"{CORE}.remote_spec"] in found


def test_core_layering_finds_a_kernel_import_of_the_server_at_import_time():
    added = imports_of(f"{KERNEL}.chat", "from ..server.embedded import EmbeddedServer\n")
    assert kernel_rule_breaks(IMPORTS | added) == [
        f"{KERNEL}.chat -> {SERVER}.embedded (at import time)"]
    added = imports_of(f"{KERNEL}.chat", "def f():\n    from ..core import router\n")
    assert kernel_rule_breaks(IMPORTS | added) == [f"{KERNEL}.chat -> {CORE}.router"]
