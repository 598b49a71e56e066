"""Figures a test saves for people to read (``test-artifacts/`` at the repository root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import REPO

ARTIFACTS = REPO / "test-artifacts"


def write_artifact(name: str, data: dict[str, Any]) -> Path:
    """Save a test's figures as JSON under ``test-artifacts/`` and print them (``-s``)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"\n[{name}] {json.dumps(data, sort_keys=True)}")
    return path
