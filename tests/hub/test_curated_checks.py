"""Curated models are checked against the size and sha256 their entry pins.

In a real Jupyter server against the fake hub, which serves every curated repository with the
same test file: the test copy of the curated list pins that file's true figures for
:data:`CURATED` (accepted), a wrong sha256 for :data:`SUBSTITUTED` (refused after the
download: a mirror that swapped the bytes) and a wrong size for :data:`RESIZED` (refused from
the listing, before a byte is fetched). A refused pull registers nothing and keeps no file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lemonade_jupyter.core.catalog import CURATED_FILE, load_curated
from lemonade_jupyter.core.hub_fetch import FileCheck
from tests.helpers.http import API

from .conftest import (
    CURATED, CURATED_FILE_NAME, RESIZED, RESIZED_REPO, SUBSTITUTED, SUBSTITUTED_REPO,
    cached_files, curated_files,
)


async def listed(api) -> dict[str, dict[str, Any]]:
    answer = await api.get(f"{API}/models", params={"show_all": "true"})
    return {m["id"]: m for m in answer.json["data"]}


def model_files(cache: Path) -> list[Path]:
    """Blobs, partial downloads and snapshot links: everything but the ``refs`` note."""
    return [p for p in cache.rglob("*") if "refs" not in p.parts and not p.is_dir()]


async def test_a_curated_file_with_the_pinned_figures_is_kept(api, hub_cache, fake_hub,
                                                              model_figures):
    answer = await api.post(f"{API}/pull", {"model_name": CURATED})
    assert answer.code == 200, answer.body
    assert Path(answer.json["path"]).name == next(iter(curated_files(CURATED, "")[1]))
    assert (await listed(api))[CURATED]["downloaded"] is True
    # Pulled again from the cache: checked again (the blob is hashed), not fetched again.
    fake_hub.reset()
    assert (await api.post(f"{API}/pull", {"model_name": CURATED})).code == 200
    assert not fake_hub.downloads("")


async def test_a_substituted_file_is_refused_and_not_kept(api, hub_cache, fake_hub,
                                                          model_figures):
    answer = await api.post(f"{API}/pull", {"model_name": SUBSTITUTED})
    assert answer.code == 502 and answer.error["code"] == "hub_error", answer.body
    message = answer.error["message"]
    assert "does not match the curated list" in message and "mirror" in message
    assert str(model_figures["sha256"]) in message  # what came, beside what was pinned
    (download,) = fake_hub.downloads(SUBSTITUTED_REPO)
    assert download["complete"]  # the bytes came, and were refused
    assert not model_files(hub_cache), model_files(hub_cache)
    assert (await listed(api))[SUBSTITUTED]["downloaded"] is False


async def test_a_file_of_another_size_is_refused_before_its_download(api, hub_cache,
                                                                     fake_hub):
    answer = await api.post(f"{API}/pull", {"model_name": RESIZED})
    assert answer.code == 502 and answer.error["code"] == "hub_error", answer.body
    assert "pins" in answer.error["message"] and CURATED_FILE_NAME in answer.error["message"]
    assert not fake_hub.downloads(RESIZED_REPO)
    assert not cached_files(hub_cache)
    assert (await listed(api))[RESIZED]["downloaded"] is False


async def test_a_cached_file_is_checked_too(api, hub_cache, fake_hub, monkeypatch):
    """The figures belong to the curated name: the same repository pulled as user.NAME is the
    user's choice. Its file, now in the cache, is still refused under the curated name,
    online (the cached blob is hashed, not fetched) and offline."""
    answer = await api.post(f"{API}/pull", {"model_name": "user.mine",
                                            "checkpoint": f"{SUBSTITUTED_REPO}:Q8_0"})
    assert answer.code == 200, answer.body
    fake_hub.reset()
    answer = await api.post(f"{API}/pull", {"model_name": SUBSTITUTED})
    assert answer.code == 502 and "does not match the curated list" in answer.error["message"]
    assert not fake_hub.downloads("")  # judged from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answer = await api.post(f"{API}/pull", {"model_name": SUBSTITUTED})
    assert answer.code == 502 and "does not match the curated list" in answer.error["message"]
    models = await listed(api)
    assert models[SUBSTITUTED]["downloaded"] is False and models["user.mine"]["downloaded"]


def test_curated_entries_pin_well_formed_figures(tmp_path):
    entries = json.loads(CURATED_FILE.read_text())
    assert len(load_curated(CURATED_FILE)) == len(entries)  # none skipped
    for spec in load_curated(CURATED_FILE):
        for path, check in (spec.checks or {}).items():
            assert isinstance(check, FileCheck) and check.size > 0 and len(check.sha256) == 64
            assert path.lower().endswith(".gguf"), (spec.name, path)
    bad = tmp_path / "curated.json"
    good = {"size": 5, "sha256": "a" * 64}
    bad.write_text(json.dumps([
        {"model_name": "ok-GGUF", "checkpoint": "o/r:Q4_0", "files": {"m-Q4_0.gguf": good}},
        {"model_name": "short-GGUF", "checkpoint": "o/r:Q4_0",
         "files": {"m.gguf": {"size": 5, "sha256": "abc"}}},
        {"model_name": "nosize-GGUF", "checkpoint": "o/r:Q4_0",
         "files": {"m.gguf": {"sha256": "a" * 64}}},
        {"model_name": "empty-GGUF", "checkpoint": "o/r:Q4_0", "files": {}},
        {"model_name": "list-GGUF", "checkpoint": "o/r:Q4_0", "files": [good]},
    ]))
    (ok,) = load_curated(bad)
    assert ok.name == "ok-GGUF" and ok.checks == {"m-Q4_0.gguf": FileCheck(5, "a" * 64)}


def test_the_test_list_pins_the_test_models(curated_list):
    specs = {s.name: s for s in load_curated()}
    assert specs[SUBSTITUTED].checks and specs[RESIZED].checks and specs[CURATED].checks
