"""Fetch a checkpoint into the Hugging Face cache: list, plan, check space, download, check, link.

Runs on a pull's own thread (:mod:`.pulls`); everything here blocks. The requests are
:mod:`.hub_transfer`'s (bounded, hung up at once by a cancel); their failures become API errors
in :mod:`.hub_errors`.

A file goes to ``blobs/<etag>.<random>.incomplete`` first and is hashed as it comes; only a
complete file that passes its check is renamed to ``blobs/<etag>`` and linked from the
snapshot, so a cancelled, failed or refused pull leaves no file of its own behind.

**Curated checks.** A curated model's entry pins the size and sha256 of each of its files.
Those figures are what the file must be, whatever ``HF_ENDPOINT`` serves: a mirror that
offers another file name, another size (seen in the listing, before a byte is fetched) or
other bytes (seen after the download) is refused, and nothing is registered or kept. An entry
that pins nothing is not pulled from a mirror at all (:mod:`.hub_source`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    HubError, HubUnavailableError, InsufficientStorageError, LemonadeError, PullCancelledError,
)
from .hub import HubEnv, HubRef, LocalModel, PullPlan, RepoFile, find_cached, plan_pull, repo_folder
from .hub_errors import hub_error
from .whisper_models import is_whisper_file, is_whisper_repo
from .hub_transfer import (
    Hangup, HubCancelled, HubSession, hash_file, link_snapshot, write_ref,
)


@dataclass(frozen=True)
class FileCheck:
    """The size in bytes and the sha256 a curated file must have."""

    size: int
    sha256: str


@dataclass
class FileProgress:
    """Bytes of one file of a pull, as the download reports them."""

    index: int
    path: str
    done: int
    total: int | None


Checks = Mapping[str, FileCheck]


def fetch(ref: HubRef, mmproj: str | None, env: HubEnv,
          progress: Callable[[FileProgress], None], cancelled: Hangup,
          planned: Callable[[PullPlan], None] | None = None,
          checks: Checks | None = None) -> LocalModel:
    """Download a checkpoint into the cache (or find it there) and return its local files.

    ``checks`` (a curated model's) maps each file's path in the repository to the size and
    sha256 it must have. Offline (``HF_HUB_OFFLINE``), only the cache is looked at. Raises the
    errors of :func:`.hub_errors.hub_error`, InvalidRequestError for a bad variant,
    InsufficientStorageError when the files cannot fit, HubError for a file that fails its
    check, PullCancelledError once ``cancelled`` is set.
    """
    try:
        return _fetch(ref, mmproj, env, progress, cancelled, planned, checks)
    except HubCancelled:
        raise PullCancelledError(f"The pull of {ref} was cancelled") from None
    except LemonadeError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure gets an API error in words
        if cancelled.is_set():
            raise PullCancelledError(f"The pull of {ref} was cancelled") from None
        raise hub_error(exc, ref, env) from exc


def _fetch(ref: HubRef, mmproj: str | None, env: HubEnv,
           progress: Callable[[FileProgress], None], cancelled: Hangup,
           planned: Callable[[PullPlan], None] | None, checks: Checks | None) -> LocalModel:
    if env.offline:
        local = find_cached(ref, mmproj, env.cache_dir)
        if local is None:
            raise HubUnavailableError(
                f"HF_HUB_OFFLINE is set and {ref} is not in the Hugging Face cache "
                f"({env.cache_dir}). Unset HF_HUB_OFFLINE to download it.", param="checkpoint")
        if checks is not None:
            _check_cached(local, ref, env, checks, cancelled)
        _check_format(local.path, os.path.basename(local.path), ref, env)
        for index, path in enumerate(local.all_files):
            size = os.path.getsize(path)
            progress(FileProgress(index, os.path.basename(path), size, size))
        return local
    with HubSession(env.endpoint, env.token, cancelled) as session:
        listing = [RepoFile(f.path, f.size) for f in session.list_files(ref.repo_id)]
        plan = plan_pull(ref, listing, mmproj)
        if planned is not None:
            planned(plan)
        if checks is not None:
            _check_listing(plan, ref, env, checks)
        cancelled.check()
        if find_cached(ref, mmproj, env.cache_dir) is None:
            _check_space(ref, plan.all_files, env.cache_dir)
        storage = repo_folder(ref.repo_id, env.cache_dir)
        revision = "main"
        paths: list[str] = []
        for index, f in enumerate(plan.all_files):
            meta = session.file_meta(ref.repo_id, revision, f.path)
            if revision == "main":  # every later file from this commit: split parts side by side
                revision = meta.commit
                write_ref(storage, meta.commit)
            total = meta.size if meta.size is not None else f.size

            def report(done: int, index: int = index, f: RepoFile = f,
                       total: int | None = total) -> None:
                progress(FileProgress(index, f.path, done, total))

            check = checks.get(f.path) if checks is not None else None
            blob = storage / "blobs" / meta.etag
            if blob.is_file():  # in the cache already: only checked, never fetched again
                if check is not None:
                    _check_file(f.path, blob.stat().st_size,
                                hash_file(blob, cancelled), check, ref, env)
                _check_format(str(blob), f.path, ref, env)
            else:
                fetched = session.download(session.file_url(ref.repo_id, revision, f.path),
                                           blob.parent, meta.size, report,
                                           hashed=check is not None)
                try:
                    if check is not None:
                        _check_file(f.path, fetched.size, fetched.sha256, check, ref, env)
                    _check_format(str(fetched.path), f.path, ref, env)
                    os.replace(fetched.path, blob)
                finally:
                    fetched.path.unlink(missing_ok=True)
            size = blob.stat().st_size
            paths.append(str(link_snapshot(storage, meta.commit, f.path, blob)))
            progress(FileProgress(index, f.path, size, size))
            cancelled.check()
    n = len(plan.files)
    return LocalModel(tuple(paths[:n]), paths[n] if plan.mmproj else "", plan.variant)


# ----------------------------------------------------------------------------- curated checks
def _check_listing(plan: PullPlan, ref: HubRef, env: HubEnv, checks: Checks) -> None:
    """Refuse, before any download, a file the curated list does not name or whose listed
    size is not the pinned one."""
    for f in plan.all_files:
        check = checks.get(f.path)
        if check is None:
            raise HubError(
                f"The hub at {env.endpoint} offers {f.path} for {ref}, a file the curated "
                f"list does not name ({', '.join(sorted(checks))}): refused. If HF_ENDPOINT "
                "is a mirror, it serves another model.", param="checkpoint")
        if f.size is not None and f.size != check.size:
            raise HubError(
                f"The hub at {env.endpoint} lists {f.path} of {ref} at {f.size} bytes; the "
                f"curated list pins {check.size} bytes: refused. If HF_ENDPOINT is a mirror, "
                "it serves another file.", param="checkpoint")


def _check_file(path: str, size: int, sha256: str, check: FileCheck, ref: HubRef,
                env: HubEnv) -> None:
    if size != check.size or sha256 != check.sha256:
        raise HubError(
            f"The file {path} of {ref} from {env.endpoint} does not match the curated list "
            f"({size} bytes, sha256 {sha256}; the list pins {check.size} bytes, sha256 "
            f"{check.sha256}): refused and not kept. If HF_ENDPOINT is a mirror, it serves "
            "another file.", param="checkpoint")


def _check_cached(local: LocalModel, ref: HubRef, env: HubEnv, checks: Checks,
                  cancelled: Hangup) -> None:
    snapshots = repo_folder(ref.repo_id, env.cache_dir) / "snapshots"
    for path in local.all_files:
        rel = Path(path).relative_to(snapshots)
        repo_path = Path(*rel.parts[1:]).as_posix()  # without the commit folder
        check = checks.get(repo_path)
        if check is None:
            raise HubError(f"The cached file {repo_path} of {ref} is not one the curated "
                           "list names: refused", param="checkpoint")
        _check_file(repo_path, os.path.getsize(path), hash_file(path, cancelled), check,
                    ref, env)


def _check_format(path: str, shown: str, ref: HubRef, env: HubEnv) -> None:
    """Refuse a file of a whisper.cpp repository that is not a whisper.cpp model (its first
    four bytes are not the ``ggml`` magic): it would register a model no engine loads."""
    if is_whisper_repo(ref.repo_id) and not is_whisper_file(path):
        raise HubError(
            f"The file {shown} of {ref} from {env.endpoint} is not a "
            "whisper.cpp model (it does not start with the ggml magic): refused and not "
            "kept. If HF_ENDPOINT is a mirror, it serves another file.", param="checkpoint")


# ----------------------------------------------------------------------------- disk space
def _check_space(ref: HubRef, missing: Sequence[RepoFile], root: Path) -> None:
    needed = sum(f.size or 0 for f in missing)
    if not needed:
        return
    free = free_bytes(root)
    if free is not None and free < needed:
        raise InsufficientStorageError(
            f"Not enough disk space to pull {ref}: it needs {_gb(needed)}, and {root} has "
            f"{_gb(free)} free. Free some space, or point HF_HUB_CACHE at a larger disk.",
            param="checkpoint")


def free_bytes(root: Path) -> int | None:
    """Free bytes on the disk that holds ``root`` (its nearest existing parent)."""
    for path in (root, *root.parents):
        try:
            return shutil.disk_usage(path).free
        except OSError:
            continue
    return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
