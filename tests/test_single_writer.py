"""A model's record has one writer, by code: only the table's records (``core/model_records.py``)
assign a ``LiveModel`` field.

Every module of the package is parsed; an assignment (plain, augmented, annotated, by tuple
unpacking, or into a field's item), a mutating call on a field's container
(``m.slot_queue.append``) or a call of the record's own mutators (``set_state``, ``touch``)
counts as a write. Writes through ``self`` are another class's own state, except in
``live_model.py``, whose mutators only the table calls. Planners return decisions, the table
applies them; derived values (``device``, ``memory_bytes``) are properties, not fields.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import lemonade_jupyter
from lemonade_jupyter.core.live_model import LiveModel

PACKAGE = Path(lemonade_jupyter.__file__).parent
#: The modules allowed to write a model's record.
OWNERS = {"core/model_records.py"}
#: The record's own methods that change it; only an owner calls them.
MUTATORS = {"set_state", "touch"}
#: Methods that change a container in place.
CONTAINER_MUTATORS = {"append", "appendleft", "remove", "pop", "popleft", "clear", "update",
                      "extend", "insert", "add", "discard", "setdefault", "rotate", "sort"}
#: Writes to a field of the same name on something that is not a model: (module, code).
NOT_A_MODEL = {
    ("core/remote.py", "replica.in_flight"),  # a remote replica's requests in flight
}
FIELDS = {f.name for f in dataclasses.fields(LiveModel)}


def _field_of(node: ast.expr) -> ast.Attribute | None:
    """The ``x.field`` that ``node`` writes, reaching through ``x.field[...]``."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and node.attr in FIELDS:
        return node
    return None


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        found = []
        for target in node.targets:
            found += target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
        return found
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    if isinstance(node, ast.Delete):
        return list(node.targets)
    return []


def writes(source: str, module: str) -> list[str]:
    """``module:line code`` of each write to a model's record in ``source``."""
    found = []
    in_record = module == "core/live_model.py"
    for node in ast.walk(ast.parse(source)):
        written: list[ast.Attribute] = []
        for target in _targets(node):
            attr = _field_of(target)
            if attr is not None:
                written.append(attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if func.attr in MUTATORS and not in_record:
                found.append(f"{module}:{node.lineno} {ast.unparse(func)}()")
            elif func.attr in CONTAINER_MUTATORS:
                attr = _field_of(func.value)
                if attr is not None:
                    written.append(attr)
        for attr in written:
            through_self = isinstance(attr.value, ast.Name) and attr.value.id == "self"
            code = ast.unparse(attr)
            if through_self or (module, code) in NOT_A_MODEL:
                continue
            found.append(f"{module}:{attr.lineno} {code}")
    return found


def test_single_writer_only_the_model_table_writes_a_model_record():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module not in OWNERS:
            violations += writes(path.read_text(), module)
    assert violations == [], "writes to a LiveModel outside the table's records:\n" + "\n".join(
        violations)


def test_single_writer_has_no_stale_exception():
    for module, code in NOT_A_MODEL:
        assert code in (PACKAGE / module).read_text(), f"{module} no longer has {code}"


def test_single_writer_derived_values_are_not_stored():
    assert not {"device", "memory_bytes"} & FIELDS


@pytest.mark.parametrize("source,expected", [
    ("m.in_flight += 1", ["x.py:1 m.in_flight"]),
    ("m.backend = None", ["x.py:1 m.backend"]),
    ("old, m.backend = m.backend, None", ["x.py:1 m.backend"]),
    ("m.placement: object = p", ["x.py:1 m.placement"]),
    ("m.load_delta['gpu'] = 3", ["x.py:1 m.load_delta"]),
    ("lease.model.busy_slots -= 1", ["x.py:1 lease.model.busy_slots"]),
    ("m.slot_queue.append(t)", ["x.py:1 m.slot_queue"]),
    ("m.set_state(s)", ["x.py:1 m.set_state()"]),
    ("m.touch()", ["x.py:1 m.touch()"]),
    ("self.backend = b", []),  # another class's own field
    ("x = m.in_flight + 1", []),  # a read
    ("m.slot_queue.index(t)", []),  # a read
])
def test_single_writer_sees_every_kind_of_write(source, expected):
    assert writes(source, "x.py") == expected
