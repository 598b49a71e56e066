"""GGUF models from the Hugging Face Hub: checkpoint names, variant choice, the local cache.

A hub checkpoint is ``ORG/REPO:VARIANT`` (a quantization such as ``Q4_K_M``, matched
case-insensitively against the repository's GGUF file names), ``ORG/REPO`` (a repository with
one GGUF model) or ``ORG/REPO/path/file.gguf``. A model split into ``NAME-00001-of-0000N.gguf``
parts is fetched whole; llama-server loads the first part and finds the others next to it,
which holds in the hub cache because every part lands in the same snapshot folder.

Files live in ``huggingface_hub``'s own cache layout (so other tools share them); the download
itself is :mod:`.hub_fetch`. The environment is read at every pull, not at import:
``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE`` and the cache location (``HF_HUB_CACHE``,
``HF_HOME``). What touches the disk blocks; :mod:`.pulls` runs it off the event loop.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HubNotFoundError, InvalidRequestError, LemonadeError
from . import whisper_models

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
_NAME_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_NAME_PART}/{_NAME_PART}$")
_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_TRUE = {"1", "on", "yes", "true"}


# ----------------------------------------------------------------------------- names
@dataclass(frozen=True)
class HubRef:
    """A parsed hub checkpoint: a repository plus a variant or an exact file (or neither)."""

    repo_id: str
    variant: str = ""
    filename: str = ""

    def __str__(self) -> str:
        if self.filename:
            return f"{self.repo_id}/{self.filename}"
        return f"{self.repo_id}:{self.variant}" if self.variant else self.repo_id

    @property
    def key(self) -> str:
        """What two spellings of one checkpoint have in common (hub names ignore case)."""
        return str(self).lower()


def parse_checkpoint(text: Any) -> HubRef | None:
    """The hub checkpoint ``text`` names, or None when it is not one (e.g. a local path).

    ``ORG/REPO`` whose repository name ends in ``.gguf`` reads as a relative file path, not as
    a repository: such names were always refused as relative paths.
    """
    if not isinstance(text, str) or not text or len(text) > 512 or text[0] in "/.~":
        return None
    if ":" in text:
        repo_id, _, variant = text.partition(":")
        if _REPO_ID.match(repo_id) and _VARIANT.match(variant) and _plain(repo_id):
            return HubRef(repo_id, variant=variant)
        return None
    parts = text.split("/")
    if len(parts) == 2 and not parts[1].lower().endswith(".gguf"):
        return HubRef(text) if _REPO_ID.match(text) and _plain(text) else None
    if len(parts) >= 3 and parts[-1].lower().endswith(".gguf"):
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        if (_REPO_ID.match(repo_id) and _plain(repo_id)
                and all(_FILE_PART.match(p) and p not in (".", "..") for p in parts[2:])):
            return HubRef(repo_id, filename=filename)
    return None


def _plain(repo_id: str) -> bool:
    """The hub refuses ``--`` and ``..`` in names (``--`` separates parts in its cache)."""
    return "--" not in repo_id and ".." not in repo_id


def is_mmproj(path: str) -> bool:
    """A multimodal projector file, never a model variant of its own."""
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


# ----------------------------------------------------------------------------- choosing files
@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int | None = None


@dataclass(frozen=True)
class _Unit:
    """One GGUF model of a repository: a single file, or every part of a split one."""

    parts: tuple[RepoFile, ...]
    stem: str  # the file name without ``.gguf`` and without the split suffix
    folder: str
    expected_parts: int

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.expected_parts

    @property
    def label(self) -> str:
        """The variant a user would type: the last ``-``/``.`` separated word, e.g. Q4_K_M."""
        return re.split(r"[-.]", self.stem)[-1] or self.stem


@dataclass(frozen=True)
class PullPlan:
    """What a pull fetches: the model's files in order (first part first) and its mmproj."""

    ref: HubRef
    files: tuple[RepoFile, ...]
    mmproj: RepoFile | None = None
    variant: str = ""

    @property
    def all_files(self) -> tuple[RepoFile, ...]:
        return self.files + ((self.mmproj,) if self.mmproj else ())

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.all_files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s)


def _units(listing: Iterable[RepoFile]) -> list[_Unit]:
    """The GGUF models of a listing (mmproj files left out), split parts grouped."""
    groups: dict[str, list[tuple[int, int, RepoFile]]] = {}
    units: list[_Unit] = []
    for f in listing:
        if not f.path.lower().endswith(".gguf") or is_mmproj(f.path):
            continue
        folder, _, name = f.path.rpartition("/")
        m = _SPLIT.match(name)
        if m:
            key = f"{folder}/{m['prefix']}".lower()
            groups.setdefault(key, []).append((int(m["index"]), int(m["count"]), f))
        else:
            units.append(_Unit((f,), name[: -len(".gguf")], folder, 1))
    for entries in groups.values():
        entries.sort(key=lambda e: e[0])
        first = entries[0][2]
        folder, _, name = first.path.rpartition("/")
        stem = _SPLIT.match(name)["prefix"]  # type: ignore[index]
        units.append(_Unit(tuple(e[2] for e in entries), stem, folder, entries[0][1]))
    return sorted(units, key=lambda u: u.parts[0].path)


def _labels(units: Sequence[_Unit]) -> list[str]:
    """A distinct, readable name per unit: its label, or its stem where labels collide."""
    seen: dict[str, int] = {}
    for u in units:
        seen[u.label.lower()] = seen.get(u.label.lower(), 0) + 1
    return [u.label if seen[u.label.lower()] == 1 else u.stem for u in units]


def _variant_matches(units: list[_Unit], variant: str) -> list[_Unit]:
    v = variant.lower()
    if v.endswith(".gguf"):
        return [u for u in units if any(p.path.rsplit("/", 1)[-1].lower() == v for p in u.parts)]
    exact = [u for u in units if u.label.lower() == v or u.stem.lower() == v
             or u.folder.rsplit("/", 1)[-1].lower() == v]
    if len(exact) == 1:
        return exact
    suffix = [u for u in units
              if any(u.stem.lower().endswith(sep + v) for sep in "-._")] or exact
    if suffix:
        return suffix
    return [u for u in units if v in u.stem.lower()]


def plan_pull(ref: HubRef, listing: Sequence[RepoFile], mmproj: str | None = None) -> PullPlan:
    """Choose the files of ``ref`` in a repository listing (pure, no network).

    Raises InvalidRequestError (400) for a variant that is unknown or matches several models,
    listing the variants there are (also as ``variants`` in the error), and HubNotFoundError
    (404) for a file, a split part or an mmproj that the repository does not have. A
    whisper.cpp repository's variant picks its ``ggml-<variant>.bin`` (:mod:`.whisper_models`).
    """
    if whisper_models.is_whisper_repo(ref.repo_id) and not ref.filename and mmproj is None:
        path, variant = whisper_models.choose_file(ref.repo_id, ref.variant,
                                                   [f.path for f in listing])
        return PullPlan(ref, tuple(f for f in listing if f.path == path), None, variant)
    units = _units(listing)
    names = _labels(units)
    every = sorted(names, key=str.lower)
    available = ", ".join(every) or "none"
    if ref.filename:
        wanted = ref.filename.lower()
        chosen = [u for u in units if any(p.path.lower() == wanted for p in u.parts)]
        if not chosen:
            raise HubNotFoundError(
                f"File '{ref.filename}' is not in {ref.repo_id}. GGUF variants there: "
                f"{available}", param="checkpoint", variants=every)
        unit = chosen[0]
    elif not ref.variant:
        if len(units) != 1:
            raise InvalidRequestError(
                f"{ref.repo_id} has {len(units) or 'no'} GGUF models; name one as "
                f"{ref.repo_id}:VARIANT. Variants: {available}",
                param="checkpoint", variants=every)
        unit = units[0]
    else:
        chosen = _variant_matches(units, ref.variant)
        if len(chosen) != 1:
            matching = sorted((names[units.index(u)] for u in chosen), key=str.lower)
            what = (f"is ambiguous in {ref.repo_id}: it matches {', '.join(matching)}"
                    if chosen else f"is not in {ref.repo_id}")
            raise InvalidRequestError(
                f"Variant '{ref.variant}' {what}. Variants: {available}",
                param="checkpoint", variants=matching or every)
        unit = chosen[0]
    if not unit.complete:
        raise HubNotFoundError(
            f"{ref.repo_id} has {len(unit.parts)} of the {unit.expected_parts} parts of "
            f"{unit.stem}", param="checkpoint")
    projector = None
    if mmproj:
        wanted = mmproj.lower()
        found = [f for f in listing
                 if f.path.lower() == wanted or f.path.rsplit("/", 1)[-1].lower() == wanted]
        if not found:
            mmprojs = ", ".join(f.path for f in listing if is_mmproj(f.path)) or "none"
            raise HubNotFoundError(
                f"mmproj file '{mmproj}' is not in {ref.repo_id} (mmproj files there: "
                f"{mmprojs})", param="mmproj")
        projector = found[0]
    return PullPlan(ref, unit.parts, projector, names[units.index(unit)])


# ----------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class HubEnv:
    """The hub settings of one pull, read from the environment when it starts."""

    endpoint: str
    token: str | None
    offline: bool
    cache_dir: Path

    @classmethod
    def current(cls) -> HubEnv:
        env = os.environ
        offline = (env.get("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE
        return cls(current_endpoint(), env.get("HF_TOKEN") or None, offline, cache_dir())


def current_endpoint() -> str:
    """The hub a pull starting now talks to: ``HF_ENDPOINT``, else the official hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """``huggingface_hub``'s cache, by its own rules (read now, not when it was imported)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface" / "hub"


def repo_folder(repo_id: str, root: Path) -> Path:
    return root / ("models--" + repo_id.replace("/", "--"))


# ----------------------------------------------------------------------------- the local cache
@dataclass(frozen=True)
class LocalModel:
    """A checkpoint's files in the cache: the model files (first part first) and the mmproj."""

    files: tuple[str, ...]
    mmproj: str = ""
    variant: str = ""

    @property
    def path(self) -> str:
        return self.files[0]

    @property
    def all_files(self) -> tuple[str, ...]:
        return self.files + ((self.mmproj,) if self.mmproj else ())

    def present(self) -> bool:
        return all(os.path.isfile(p) for p in self.all_files)

    @property
    def size(self) -> int:
        total = 0
        for p in self.all_files:
            try:
                total += os.path.getsize(p)
            except OSError:
                pass
        return total


def find_cached(ref: HubRef, mmproj: str | None, root: Path) -> LocalModel | None:
    """The checkpoint's complete files in the cache under ``root``, or None (no network).

    Every snapshot of the repository is looked at, the one ``refs/main`` names first: another
    pull of the same repository may have moved ``main`` to a snapshot without this model.
    """
    storage = repo_folder(ref.repo_id, root)
    snapshots = storage / "snapshots"
    if not snapshots.is_dir():
        return None
    try:
        main = (storage / "refs" / "main").read_text().strip()
    except OSError:
        main = ""
    try:
        folders = sorted(snapshots.iterdir(), key=lambda p: (p.name != main, -_mtime(p)))
    except OSError:
        return None
    for folder in folders:
        listing = list(_local_listing(folder))
        try:
            plan = plan_pull(ref, listing, mmproj)
        except LemonadeError:
            continue
        local = LocalModel(tuple(str(folder / f.path) for f in plan.files),
                           str(folder / plan.mmproj.path) if plan.mmproj else "", plan.variant)
        if local.present():
            return local
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _local_listing(folder: Path) -> Iterable[RepoFile]:
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            full = Path(dirpath) / name
            try:
                size = full.stat().st_size  # follows the snapshot's link to its blob
            except OSError:
                continue  # a dangling link: the blob was removed
            yield RepoFile(full.relative_to(folder).as_posix(), size)


def remove_cached(paths: Iterable[str]) -> list[str]:
    """Delete snapshot entries and the blobs they point to; return what was removed."""
    removed = []
    for path in paths:
        try:
            blob = os.path.realpath(path)
            if os.path.islink(path) or os.path.isfile(path):
                os.unlink(path)
                removed.append(path)
            if blob != path and os.path.isfile(blob):
                os.unlink(blob)
        except OSError as exc:
            log.warning("Could not remove %s: %s", path, exc)
    return removed
