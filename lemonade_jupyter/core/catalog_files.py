"""The catalog's two state files in the data folder, read and written whole.

``user_models.json`` keeps the user models (a list of :meth:`ModelSpec.to_json` entries);
``downloaded_models.json`` keeps which curated models were pulled here, with their files. Both
are written atomically and read forgivingly: a junk file is moved aside
(:func:`.state_files.read_json_or_quarantine`) and a junk entry skipped with a warning, so a
damaged file never stops the server's start (``tests/reliability/test_state_files.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable, Mapping
from pathlib import Path

from . import names
from .hub import LocalModel, parse_checkpoint
from .model_spec import USER_NAME, ModelSpec
from .state_files import read_json_or_quarantine, write_json_atomic

log = logging.getLogger(__name__)


def write_user_models(path: Path, specs: Iterable[ModelSpec]) -> None:
    write_json_atomic(path, [s.to_json() for s in specs])


def read_user_models(path: Path) -> dict[str, ModelSpec]:
    """The user models kept in ``path``, by name."""
    found: dict[str, ModelSpec] = {}
    entries = read_json_or_quarantine(path, list) or []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model_name")
        labels = entry.get("labels") or ["llm"]
        extra = [entry.get(k, "") for k in ("source", "mmproj", "mmproj_source")]
        files = entry.get("files") or []
        if not isinstance(entry.get("checkpoint", ""), str) or not (
            isinstance(labels, list) and all(isinstance(x, str) for x in labels)
        ) or not all(isinstance(x, str) for x in extra) or not (
            isinstance(files, list) and all(isinstance(x, str) for x in files)
        ):  # a junk entry must not stop the server's start (tests/reliability)
            log.warning("Skipping bad entry in %s: %r", path, entry)
            continue
        if names.spelled(USER_NAME, name):
            # No file check here: a model whose file went away stays listed and gives a
            # clear 404-style error on load instead of vanishing silently (a hub model is
            # pulled again).
            found[name] = ModelSpec(
                name=name,
                checkpoint=str(entry.get("checkpoint", "")),
                recipe=str(entry.get("recipe", "llamacpp")),
                labels=tuple(str(x) for x in entry.get("labels") or ["llm"]),
                source=extra[0] if parse_checkpoint(extra[0]) else "",
                mmproj=extra[1], mmproj_source=extra[2], files=tuple(files),
            )
    return found


def write_downloads(path: Path, downloaded: Mapping[str, LocalModel]) -> None:
    write_json_atomic(path, {
        name: {"files": list(local.files), "mmproj": local.mmproj, "variant": local.variant}
        for name, local in downloaded.items()})


def read_downloads(path: Path, curated: Container[str]) -> dict[str, LocalModel]:
    """The files of the curated models pulled here, by name (names no longer curated are
    dropped)."""
    found: dict[str, LocalModel] = {}
    entries = read_json_or_quarantine(path, dict) or {}
    for name, entry in entries.items():
        files = entry.get("files") if isinstance(entry, dict) else None
        if (name in curated and isinstance(files, list) and files
                and all(isinstance(p, str) for p in files)
                and isinstance(entry.get("mmproj", ""), str)):
            found[name] = LocalModel(tuple(files), entry.get("mmproj", ""),
                                     str(entry.get("variant", "")))
    return found
