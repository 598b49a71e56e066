"""The curated list (``curated_models.json``): well-known GGUF checkpoints on the Hugging Face
Hub, and whisper.cpp's speech models (``"recipe": "whispercpp"``), known by name before they
are downloaded.

An entry may pin the size and sha256 of each of its files (``"files": {PATH: {"size": N,
"sha256": HEX}}``); a pull then keeps only files that match (see :mod:`.hub_fetch`), from
any hub. An entry that pins nothing is pulled only from the official hub (:mod:`.hub_source`).
The file ships with the package, but a bad entry is skipped with a warning rather than stopping
a start: the list is read once, when the catalog is built.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from . import names
from .hub import parse_checkpoint
from .hub_fetch import FileCheck
from .model_spec import DEFAULT_MODEL, KNOWN_RECIPES, LABEL, ModelSpec

log = logging.getLogger(__name__)

CURATED_FILE = Path(__file__).with_name("curated_models.json")
_CURATED_NAME = names.MODEL_NAME
_SHA256 = re.compile(r"[0-9a-f]{64}")


def load_curated(path: Path | None = None) -> list[ModelSpec]:
    """The curated list (``CURATED_FILE``, read when called, unless ``path``); a bad entry is
    skipped with a warning, never stops the start."""
    path = CURATED_FILE if path is None else path
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("Cannot read the curated model list %s: %s", path, exc)
        return []
    specs: dict[str, ModelSpec] = {}
    for entry in entries if isinstance(entries, list) else []:
        name = None
        try:
            name, checkpoint = entry["model_name"], entry["checkpoint"]
            labels = entry.get("labels") or ["llm"]
            recipe = entry.get("recipe") or "llamacpp"  # whispercpp: a speech model
            mmproj = entry.get("mmproj") or ""
            size = entry.get("size")
            checks = _file_checks(entry.get("files"))
            ok = bool(names.spelled(_CURATED_NAME, name)
                      and not name.startswith("user.") and name != DEFAULT_MODEL
                      and parse_checkpoint(checkpoint) is not None
                      and isinstance(labels, list)
                      and all(names.spelled(LABEL, x) for x in labels)
                      and isinstance(mmproj, str)
                      and recipe in KNOWN_RECIPES
                      and (size is None or isinstance(size, (int, float))))
        except (KeyError, TypeError, AttributeError, ValueError):
            ok = False
        if not ok or name in specs:
            log.warning("Skipping bad entry in %s: %r", path, entry)
            continue
        specs[name] = ModelSpec(name=name, checkpoint="", recipe=recipe, labels=tuple(labels),
                                source=checkpoint,
                                mmproj_source=mmproj, curated=True,
                                size_gb=float(size) if size is not None else None,
                                checks=checks)
    return list(specs.values())


def _file_checks(files: Any) -> dict[str, FileCheck] | None:
    """The pinned files of a curated entry (None when it pins none); ValueError when the
    field is malformed."""
    if files is None:
        return None
    if not isinstance(files, dict) or not files:
        raise ValueError("'files' must map file paths to their size and sha256")
    checks = {}
    for path, figures in files.items():
        if not (isinstance(path, str) and isinstance(figures, dict)
                and isinstance(figures.get("size"), int) and figures["size"] > 0
                and isinstance(figures.get("sha256"), str)
                and _SHA256.fullmatch(figures["sha256"])):
            raise ValueError(f"bad size or sha256 for {path!r}")
        checks[path] = FileCheck(figures["size"], figures["sha256"])
    return checks
