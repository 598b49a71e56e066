"""A curated model whose entry pins no file figures comes only from the official hub.

In a real Jupyter server whose ``HF_ENDPOINT`` is the fake hub (a mirror, as far as the
router can tell): with a curated list where :data:`CURATED` pins nothing, its pull (by
``/pull``, by a load, which pulls first, and by Ollama's pull) is refused with a 403 that says
what to do, before the mirror is asked anything; the same entry with its figures pinned is
pulled from the mirror and checked; the same checkpoint under a ``user.`` name, the body the
refusal suggests, is pulled from it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from lemonade_jupyter.core import curated
from lemonade_jupyter.core.catalog import load_curated
from lemonade_jupyter.core.hub import DEFAULT_ENDPOINT
from lemonade_jupyter.core.hub_fetch import FileCheck
from lemonade_jupyter.core.hub_source import is_official, require_trusted_source
from lemonade_jupyter.errors import UnverifiedSourceError
from tests.helpers.http import API

from .conftest import CURATED, cached_files, curated_files


@pytest.fixture
def unpinned(test_curated_file: Path, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test curated list with :data:`CURATED`'s figures removed, read by the catalog of
    the server that starts after this fixture (request it before ``api``)."""
    entries = json.loads(test_curated_file.read_text())
    for entry in entries:
        if entry["model_name"] == CURATED:
            del entry["files"]
    path = hub_dir / "curated_unpinned.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setattr(curated, "CURATED_FILE", path)
    assert {s.name: s for s in load_curated()}[CURATED].checks is None
    return path


async def listed(api) -> dict[str, dict[str, Any]]:
    answer = await api.get(f"{API}/models", params={"show_all": "true"})
    return {m["id"]: m for m in answer.json["data"]}


def suggested_body(message: str) -> dict[str, Any]:
    """The ``/pull`` body a refusal suggests (the JSON that ends its message)."""
    return json.loads(message[message.index("{"):])


async def test_an_unpinned_curated_pull_from_a_mirror_is_refused(unpinned, api, lemonade,
                                                                 hub_cache, fake_hub):
    answer = await api.post(f"{API}/pull", {"model_name": CURATED})
    assert answer.code == 403 and answer.error["code"] == "unverified_source", answer.body
    assert answer.error["type"] == "permission_error" and answer.error["param"] == "model_name"
    message = answer.error["message"]
    assert fake_hub.url in message and DEFAULT_ENDPOINT in message
    assert "scripts/curated_figures.py --write" in message
    assert suggested_body(message)["model_name"] == f"user.{CURATED}"
    # A load pulls a curated model first: refused the same way.
    load = await api.post(f"{API}/load", {"model_name": CURATED})
    assert load.code == 403 and load.error["code"] == "unverified_source", load.body
    # The Ollama pull of the name too, in Ollama's error shape.
    ollama = await api.post("lemonade/ollama/api/pull", {"model": CURATED, "stream": False})
    assert ollama.code == 403 and "pins no size and sha256" in ollama.json["error"]
    # Nothing asked of the mirror, nothing cached, nothing registered, no pull started.
    assert fake_hub.requests() == []
    assert not cached_files(hub_cache)
    models = await listed(api)
    assert models[CURATED]["downloaded"] is False and f"user.{CURATED}" not in models
    assert not [e for e in lemonade.router.events.recent()
                if e.model == CURATED and e.kind == "pull"]


async def test_the_same_entry_pinned_is_pulled_from_the_mirror_and_checked(
        api, hub_cache, fake_hub, model_figures):
    answer = await api.post(f"{API}/pull", {"model_name": CURATED})
    assert answer.code == 200, answer.body
    repo, files = curated_files(CURATED, "")
    (download,) = fake_hub.downloads(repo)
    assert download["complete"]
    kept = Path(answer.json["path"])
    assert kept.name == next(iter(files))
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == model_figures["sha256"]
    assert (await listed(api))[CURATED]["downloaded"] is True


async def test_a_user_pull_of_the_same_checkpoint_from_the_mirror_works(unpinned, api,
                                                                        hub_cache, fake_hub):
    refused = await api.post(f"{API}/pull", {"model_name": CURATED})
    assert refused.code == 403, refused.body
    body = suggested_body(refused.error["message"])
    answer = await api.post(f"{API}/pull", body)
    assert answer.code == 200, answer.body
    repo, files = curated_files(CURATED, "")
    assert answer.json["checkpoint"].startswith(repo)
    assert Path(answer.json["path"]).name == next(iter(files))
    models = await listed(api)
    assert models[body["model_name"]]["downloaded"] is True
    assert models[CURATED]["downloaded"] is False  # the user's model, not the curated one


@pytest.mark.parametrize("endpoint", [
    "https://huggingface.co", "https://huggingface.co/", "https://HuggingFace.co",
    "https://huggingface.co:443",
])
def test_the_official_hub_is_recognised(endpoint):
    assert is_official(endpoint)
    require_trusted_source("m-GGUF", "o/r:Q4_0", None, None, endpoint)  # no error


@pytest.mark.parametrize("endpoint", [
    "http://huggingface.co", "https://huggingface.co:8443", "https://hf-mirror.com",
    "https://huggingface.co.example.com", "https://example.com/huggingface.co",
    "https://user:pw@huggingface.co", "https://huggingface.co/mirror", "https://huggingface.co?x=1",
    "https://huggingface.co:99999", "http://127.0.0.1:8080", "huggingface.co", "",
])
def test_any_other_endpoint_is_not_the_official_hub(endpoint):
    assert not is_official(endpoint)
    with pytest.raises(UnverifiedSourceError) as caught:
        require_trusted_source("m-GGUF", "o/r:Q4_0", "mmproj-f16.gguf", None, endpoint)
    assert json.loads(caught.value.message[caught.value.message.index("{"):]) == {
        "model_name": "user.m-GGUF", "checkpoint": "o/r:Q4_0", "mmproj": "mmproj-f16.gguf"}


def test_pinned_figures_allow_any_endpoint():
    require_trusted_source("m-GGUF", "o/r:Q4_0", None, {"m-Q4_0.gguf": FileCheck(5, "a" * 64)},
                           "http://127.0.0.1:8080")
