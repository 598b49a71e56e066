"""whisper.cpp models on the hub: which checkpoints are speech models, and which file a variant picks.

whisper.cpp's models are not GGUF files: ``ggerganov/whisper.cpp`` on the Hugging Face Hub holds
one ``ggml-<variant>.bin`` per model (``ggml-tiny.en.bin``, ``ggml-large-v3-turbo-q5_0.bin``…), in
whisper.cpp's own format, which opens with the magic ``ggml`` (0x67676d6c, little-endian). A
pull spells them the way GGUF pulls spell a quantization, ``ggerganov/whisper.cpp:tiny.en``
(the file name ``ggml-tiny.en.bin`` is accepted as the variant too), and such a model runs
with recipe ``whispercpp`` in the ``transcription`` pool.

The variant reaches a URL and a file name, so it is checked against an allowlist of
whisper.cpp's model names (:data:`VARIANT`, matched whole), never looked up loosely the way a
GGUF variant is. Pure functions, no I/O but the four bytes of :func:`is_whisper_file`;
:func:`.hub.plan_pull` hands a whisper repository's listing here, :mod:`.hub_fetch` checks the
magic of what arrives before it is kept, :mod:`.catalog_pulls` gives the model its recipe and
label.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from ..errors import HubNotFoundError, InvalidRequestError
from . import names

#: The recipe and the label of a whisper.cpp model.
WHISPER_RECIPE = "whispercpp"
WHISPER_LABEL = "transcription"
#: The hub repositories that hold whisper.cpp models (lowercase; hub names ignore case).
WHISPER_REPOS = frozenset({"ggerganov/whisper.cpp"})
#: whisper.cpp's model names, with their English-only (``.en``) and quantized forms.
VARIANT = re.compile(
    r"(?:(?:tiny|base|small|medium)(?:\.en)?|large-v1|large-v2|large-v3|large-v3-turbo)"
    r"(?:-q5_0|-q5_1|-q8_0)?")
#: The first four bytes of a whisper.cpp model file: ``ggml`` as a little-endian uint32
#: (the one definition: the catalog, the hub checks, the memory estimate and the engine's
#: header check all read it from here).
MAGIC = 0x67676D6C
MAGIC_BYTES = MAGIC.to_bytes(4, "little")
_FILE = re.compile(r"ggml-(?P<variant>.+)\.bin")
_EXAMPLES = "tiny, tiny.en, base, base.en, small, small.en, medium, large-v3, large-v3-turbo"


def is_whisper_repo(repo_id: str) -> bool:
    """Whether a hub repository is one of whisper.cpp's model repositories."""
    return repo_id.lower() in WHISPER_REPOS


def file_name(variant: str) -> str:
    """The file of a checked variant in the repository: ``ggml-<variant>.bin``."""
    return f"ggml-{variant}.bin"


def check_variant(repo_id: str, variant: str) -> str:
    """The variant in its canonical (lowercase) spelling; InvalidRequestError (400) when it is
    missing or not one of whisper.cpp's model names."""
    if not variant:
        raise InvalidRequestError(
            f"{repo_id} holds many whisper.cpp models; name one as {repo_id}:VARIANT "
            f"({_EXAMPLES}, or a quantized one such as base.en-q5_1)", param="checkpoint")
    wanted = variant.lower()
    spelled_as_file = _FILE.fullmatch(wanted)
    if spelled_as_file:
        wanted = spelled_as_file["variant"]
    if not names.spelled(VARIANT, wanted):
        raise InvalidRequestError(
            f"Variant '{variant}' is not a whisper.cpp model name; one of {_EXAMPLES}, "
            "optionally with -q5_0, -q5_1 or -q8_0", param="checkpoint")
    return wanted


def variants_in(paths: Sequence[str]) -> list[str]:
    """The whisper.cpp models a repository listing holds (their variant names, sorted)."""
    found = []
    for path in paths:
        m = _FILE.fullmatch(path.lower())
        if m and names.spelled(VARIANT, m["variant"]):
            found.append(m["variant"])
    return sorted(found)


def choose_file(repo_id: str, variant: str, paths: Sequence[str]) -> tuple[str, str]:
    """The path of the file ``variant`` picks in a repository listing, and the variant's
    canonical name. Raises InvalidRequestError (400) for a variant that is no whisper.cpp model
    name, HubNotFoundError (404) when the repository does not hold it."""
    wanted = check_variant(repo_id, variant)
    target = file_name(wanted)
    for path in paths:
        if path.lower() == target:
            return path, wanted
    there = variants_in(paths)
    raise HubNotFoundError(
        f"{repo_id} has no {target}. whisper.cpp models there: {', '.join(there) or 'none'}",
        param="checkpoint", variants=there)


def pull_fields(recipe: Any, labels: Any) -> tuple[str, Any]:
    """The recipe and labels a pulled whisper.cpp model gets: recipe ``whispercpp`` (the only
    one that runs it; InvalidRequestError for another) and the ``transcription`` label first,
    whatever other labels were asked for (their spelling is checked with every user model's)."""
    if recipe not in (None, "", WHISPER_RECIPE):
        raise InvalidRequestError(
            f"A whisper.cpp model runs with recipe '{WHISPER_RECIPE}', not {recipe!r}",
            param="recipe")
    if labels is None or labels == []:
        return WHISPER_RECIPE, [WHISPER_LABEL]
    if isinstance(labels, list) and WHISPER_LABEL not in labels:
        return WHISPER_RECIPE, [WHISPER_LABEL, *labels]
    return WHISPER_RECIPE, labels


def is_whisper_file(path: str) -> bool:
    """Whether ``path`` is a regular file that opens with whisper.cpp's model magic (reads
    four bytes)."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC_BYTES
    except OSError:
        return False
