"""Pull orchestration: from a ``/pull`` body to a registered model.

A pull is three steps, so that a bad request changes nothing and a download never blocks the
loop: :func:`prepare_pull` validates the whole request without side effects (a
:class:`PullRequest`), ``Catalog.start_pull`` starts or joins the download on the
:class:`~.pulls.PullManager`, and :func:`finish_pull` waits for it and registers the result (a
failed pull registers nothing). Three kinds of pull: a user model from a local file or a hub
checkpoint (``user``), a curated model by name (``curated``), and a registered hub model whose
files went missing (``refresh``).

The functions work on the catalog through :class:`PullCatalog`, the few things they need from
it; ``Catalog`` (``catalog.py``) is the one implementation and keeps its own state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..api_paths import API_V1
from ..errors import InvalidRequestError, ModelNotFoundError
from . import names, whisper_models
from .hub import HubRef, LocalModel, current_endpoint, parse_checkpoint
from .hub_fetch import Checks
from .hub_source import require_trusted_source
from .model_spec import MMPROJ, ModelSpec, check_user_fields
from .pulls import PullJob


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


class PullCatalog(Protocol):
    """What a pull reads from and writes to the catalog."""

    def __contains__(self, name: object) -> bool: ...

    def get(self, name: str) -> ModelSpec: ...

    def add_user_model(self, name: Any, checkpoint: Any, recipe: Any = ...,
                       labels: Any = ...) -> ModelSpec: ...

    def is_user_model(self, name: str) -> bool: ...

    def register(self, spec: ModelSpec) -> ModelSpec: ...

    def record_download(self, name: str, local: LocalModel) -> None: ...


def prepare_pull(catalog: PullCatalog, name: Any, checkpoint: Any, recipe: Any = None,
                 labels: Any = None, mmproj: Any = None) -> PullRequest:
    """Validate a ``/pull`` completely, without side effects; InvalidRequestError (400).

    With a ``checkpoint``: a user model from a local GGUF file or a hub checkpoint. Without
    one: a model of the catalog, pulled by its name; a curated one whose entry pins no file
    figures only from the official hub, else UnverifiedSourceError (403, :mod:`.hub_source`).
    """
    if checkpoint is None and isinstance(name, str) and name in catalog:
        spec = catalog.get(name)
        if labels is not None or recipe not in (None, "llamacpp", spec.recipe):
            raise InvalidRequestError(
                f"'{name}' is in the catalog: pull it by name only, or register a copy as "
                "user.NAME with a checkpoint", param="labels" if labels is not None
                else "recipe")
        if mmproj is not None:
            raise InvalidRequestError("Parameter 'mmproj' needs a hub checkpoint",
                                      param="mmproj")
        ref = parse_checkpoint(spec.source) if spec.source else None
        kind = "curated" if spec.curated else "refresh"
        if spec.curated and spec.source:
            # Read from the same environment the download reads an instant later (start_pull
            # follows without an await in between): the refusal cannot miss a new HF_ENDPOINT.
            require_trusted_source(name, spec.source, spec.mmproj_source or None, spec.checks,
                                   current_endpoint())
        return PullRequest(name, spec.source or spec.checkpoint, ref, spec.recipe,
                           spec.labels, spec.mmproj_source or None, kind, spec.checks)
    if checkpoint is None and isinstance(name, str) and not name.startswith("user."):
        raise ModelNotFoundError(
            f"Model '{name}' is not in the catalog: give a checkpoint to register it as "
            f"user.NAME, or pick a name from GET {API_V1}/models?show_all=true",
            param="model_name")
    ref = parse_checkpoint(checkpoint)
    if ref is not None and whisper_models.is_whisper_repo(ref.repo_id):
        # A speech model: its recipe and label are fixed, its variant must name a model.
        recipe, labels = whisper_models.pull_fields(recipe, labels)
        whisper_models.check_variant(ref.repo_id, ref.variant)
        if mmproj is not None:
            raise InvalidRequestError("A whisper.cpp model has no mmproj file", param="mmproj")
    elif ref is not None and recipe == whisper_models.WHISPER_RECIPE:
        raise InvalidRequestError(
            f"Recipe '{recipe}' runs whisper.cpp models, pulled from "
            f"{', '.join(sorted(whisper_models.WHISPER_REPOS))} as REPO:VARIANT",
            param="recipe")
    name, recipe, label_tuple = check_user_fields(name, recipe, labels,
                                                  ref if ref else checkpoint)
    if mmproj is not None:
        if ref is None:
            raise InvalidRequestError("Parameter 'mmproj' needs a hub checkpoint",
                                      param="mmproj")
        if not names.spelled(MMPROJ, mmproj) or ".." in mmproj:
            raise InvalidRequestError(
                "Parameter 'mmproj' must be the name of a file of the checkpoint's "
                "repository", param="mmproj")
    return PullRequest(name, checkpoint, ref, recipe, label_tuple, mmproj)


async def finish_pull(catalog: PullCatalog, request: PullRequest,
                      job: PullJob | None) -> ModelSpec:
    """Wait for the download, then register the result. A failed pull registers nothing."""
    if job is None:
        if request.kind == "user":
            return catalog.add_user_model(request.name, request.checkpoint, request.recipe,
                                          list(request.labels))
        return catalog.get(request.name)
    local = await job.wait()
    if request.kind == "curated":
        catalog.record_download(request.name, local)
        return catalog.get(request.name)
    if request.kind == "refresh" and not catalog.is_user_model(request.name):
        return catalog.get(request.name)  # deleted while its files came back
    return catalog.register(ModelSpec(
        name=request.name, checkpoint=local.path, recipe=request.recipe,
        labels=request.labels, source=request.checkpoint, mmproj=local.mmproj,
        mmproj_source=request.mmproj or "", files=local.all_files))
