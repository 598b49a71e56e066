"""Atomic JSON state files: all-or-nothing writes; corrupt files are moved aside."""

from __future__ import annotations

import json
import os

import pytest

from lemonade_jupyter.core.state_files import read_json_or_quarantine, write_json_atomic


def test_write_then_read(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_json_atomic(path, {"pins": {"a": True}})
    assert json.loads(path.read_text()) == {"pins": {"a": True}}
    assert read_json_or_quarantine(path, dict) == {"pins": {"a": True}}
    assert os.listdir(path.parent) == ["state.json"]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"v": object()})  # not serialisable: fails mid-dump
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_missing_file_is_none(tmp_path):
    assert read_json_or_quarantine(tmp_path / "nope.json", dict) is None


@pytest.mark.parametrize("content,expected", [
    ("{half", dict), ("", dict), ("[]", dict), ('{"a": 1}', list),
])
def test_corrupt_file_moved_aside(tmp_path, content, expected):
    path = tmp_path / "state.json"
    path.write_text(content)
    assert read_json_or_quarantine(path, expected) is None
    assert not path.exists()
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == content
