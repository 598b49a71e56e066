"""Fixtures of the hub tests: a fake Hugging Face Hub in a subprocess, and a private cache.

The fake (``tests/fakes/fake_hub.py``) serves the default model's GGUF under several names:

* ``test/SmolLM2-GGUF``: four quantizations (``Q4_1``, ``Q8_0``, ``Q4_K_M``, ``Q4_K_S``), an
  mmproj file and a README;
* ``test/split-GGUF``: the model split in two real GGUF parts (``…-00001-of-00002.gguf``);
* ``test/flaky-GGUF``: the first download of each file is cut after 40 MiB;
* ``test/slow-GGUF``: served at 40 MB/s, so that a pull is still running when a test acts;
* ``test/crawl-GGUF``: served at 4 MB/s, and silent for 30 s once :data:`STALL_AT` bytes are
  sent: a cancel that did not hang up the connection would wait for the hub;
* ``test/private-GGUF``: needs ``HF_TOKEN`` = :data:`TOKEN`;
* ``test/gated-GGUF`` (403 gated), ``test/broken-GGUF`` (500), ``test/garbled-GGUF`` (a
  listing that is not JSON), ``test/gone-GGUF`` (a listed file that answers 404): the hub's
  failures;
* the repository of the curated ``SmolLM2-360M-Instruct-GGUF`` (as the catalog names it), and
  of two test-only curated models whose pinned figures the served file does not have.

Each test gets its own ``HF_HUB_CACHE`` (removed afterwards) and ``HF_ENDPOINT`` pointing at
the fake, and the catalog reads a test copy of the curated list (:func:`curated_list`) that
pins the figures of the files the fake serves, computed here: to the router the fake is a
mirror, and a curated entry that pins nothing comes only from the official hub. The server
tests reuse the in-process Jupyter server of ``tests/server``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lemonade_jupyter.core import curated
from lemonade_jupyter.core.catalog import CURATED_FILE, load_curated
from lemonade_jupyter.core.hub import parse_checkpoint
from tests.fakes.fake_hub import FakeHub
from tests.server.conftest import (  # noqa: F401 - fixtures shared with the server tests
    api, jp_server_config, lemonade, lemonade_data_dir, lemonade_traits, server_url, token,
)

from .gguf_split import split_gguf

TOKEN = "hf_fake_token_for_the_tests"
SMOL = "test/SmolLM2-GGUF"
SPLIT = "test/split-GGUF"
FLAKY = "test/flaky-GGUF"
SLOW = "test/slow-GGUF"
PRIVATE = "test/private-GGUF"
CRAWL = "test/crawl-GGUF"
GATED = "test/gated-GGUF"
BROKEN = "test/broken-GGUF"
GARBLED = "test/garbled-GGUF"
GONE = "test/gone-GGUF"
CURATED = "SmolLM2-360M-Instruct-GGUF"
#: Test-only curated models: the served file has the pinned size but other bytes, or another
#: size than the pinned one.
SUBSTITUTED, RESIZED = "Substituted-GGUF", "Resized-GGUF"
SUBSTITUTED_REPO, RESIZED_REPO = "test/substituted-GGUF", "test/resized-GGUF"
CURATED_FILE_NAME = "model-q8_0.gguf"
#: Where the fake cuts a first download: a multiple of huggingface_hub's 10 MiB reads, so every
#: byte sent before the cut was written to the cache (a partly read chunk would be lost and
#: fetched again, which is the library's business, not ours).
CUT_AT = 40 * 1024 * 1024
SLOW_RATE = 40_000_000
CRAWL_RATE = 4_000_000
STALL_AT = 8 * 1024 * 1024


def curated_files(model: str, path: str) -> tuple[str, dict[str, str]]:
    """The repository of a curated model and a file that its variant picks."""
    spec = {s.name: s for s in load_curated(CURATED_FILE)}[model]
    ref = parse_checkpoint(spec.source)
    assert ref is not None and ref.variant
    stem = ref.repo_id.split("/")[1].removesuffix("-GGUF").lower()
    return ref.repo_id, {f"{stem}-{ref.variant.lower()}.gguf": path}


SPLIT_STEM = "SmolLM2-135M-Instruct-Q4_1"


@pytest.fixture(scope="session")
def hub_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the fake hub's own files live (its config, the README, the split parts)."""
    return tmp_path_factory.mktemp("fake-hub")


@pytest.fixture(scope="session")
def split_parts(hub_dir: Path, default_model_file: str) -> list[Path]:
    """The default model as a real two-part split GGUF, written on first use (seconds of
    work that only the split test needs); the fake hub already serves these paths."""
    parts = split_gguf(default_model_file, hub_dir, SPLIT_STEM)
    assert parts == [hub_dir / name for name in split_names()]
    return parts


def split_names() -> list[str]:
    return [f"{SPLIT_STEM}-{i:05d}-of-00002.gguf" for i in (1, 2)]


@pytest.fixture(scope="session")
def fake_hub(hub_dir: Path, default_model_file: str) -> Iterator[FakeHub]:
    work = hub_dir
    readme = work / "README.md"
    readme.write_text("# SmolLM2 GGUF (test copy)\n")
    m = default_model_file
    curated_repo, curated = curated_files(CURATED, m)
    repos = {
        SMOL: {"files": {
            "SmolLM2-135M-Instruct-Q4_1.gguf": m, "SmolLM2-135M-Instruct-Q8_0.gguf": m,
            "SmolLM2-135M-Instruct-Q4_K_M.gguf": m, "SmolLM2-135M-Instruct-Q4_K_S.gguf": m,
            "mmproj-SmolLM2-f16.gguf": m, "README.md": str(readme)}},
        SPLIT: {"files": {name: str(work / name) for name in split_names()}},
        FLAKY: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m}, "cut_at": CUT_AT},
        SLOW: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m}, "rate": SLOW_RATE},
        CRAWL: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m}, "rate": CRAWL_RATE,
                "stall_at": STALL_AT, "stall_s": 30},
        PRIVATE: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m}, "private": True},
        GATED: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m}, "gated": True},
        BROKEN: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m}, "status": 500},
        GARBLED: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m}, "bad_listing": True},
        GONE: {"files": {"SmolLM2-135M-Instruct-Q4_1.gguf": m},
               "gone": ["SmolLM2-135M-Instruct-Q4_1.gguf"]},
        curated_repo: {"files": curated},
        SUBSTITUTED_REPO: {"files": {CURATED_FILE_NAME: m}},
        RESIZED_REPO: {"files": {CURATED_FILE_NAME: m}},
    }
    with FakeHub(repos, work, token=TOKEN) as hub:
        yield hub


@pytest.fixture(scope="session")
def model_figures(default_model_file: str) -> dict[str, object]:
    """The true size and sha256 of the file the fake serves for every model."""
    sha = hashlib.sha256()
    with open(default_model_file, "rb") as fh:
        while chunk := fh.read(1 << 22):
            sha.update(chunk)
    return {"size": os.path.getsize(default_model_file), "sha256": sha.hexdigest()}


@pytest.fixture(scope="session")
def test_curated_file(hub_dir: Path, model_figures: dict[str, object]) -> Path:
    """The real curated list with the figures of the served file for :data:`CURATED`, plus
    :data:`SUBSTITUTED` (the pinned sha256 is not the served file's) and :data:`RESIZED`
    (the pinned size is not the served file's)."""
    entries = json.loads(CURATED_FILE.read_text())
    curated_repo, curated = curated_files(CURATED, "")
    for entry in entries:
        if entry["model_name"] == CURATED:
            entry["files"] = {next(iter(curated)): model_figures}
    size, sha = model_figures["size"], model_figures["sha256"]
    assert isinstance(size, int) and isinstance(sha, str)
    other = hashlib.sha256(b"another file").hexdigest()
    entries += [
        {"model_name": SUBSTITUTED, "checkpoint": f"{SUBSTITUTED_REPO}:Q8_0", "size": 0.1,
         "files": {CURATED_FILE_NAME: {"size": size, "sha256": other}}},
        {"model_name": RESIZED, "checkpoint": f"{RESIZED_REPO}:Q8_0", "size": 0.1,
         "files": {CURATED_FILE_NAME: {"size": size + 1, "sha256": sha}}},
    ]
    path = hub_dir / "curated_models.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(autouse=True)
def curated_list(test_curated_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every catalog of a hub test reads the test copy of the curated list."""
    monkeypatch.setattr(curated, "CURATED_FILE", test_curated_file)
    return test_curated_file


@pytest.fixture
def hub_cache(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
              ) -> Iterator[Path]:
    """``HF_ENDPOINT`` at the fake, an empty private ``HF_HUB_CACHE``; no token, online."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    fake_hub.reset()
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


def cached_files(cache: Path) -> list[Path]:
    """Every file under the cache (blobs, partial downloads), links excluded."""
    return sorted(p for p in cache.rglob("*") if p.is_file() and not p.is_symlink())
