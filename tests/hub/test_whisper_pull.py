"""whisper.cpp models pulled and registered like GGUF ones, in a real Jupyter server.

A fake hub of its own serves ``ggerganov/whisper.cpp`` (whisper.cpp's model repository, as the
catalog names it) with a small whisper.cpp model file, and a "model" that is a GGUF file in
disguise. A pull spelled ``ggerganov/whisper.cpp:tiny.en`` fetches ``ggml-tiny.en.bin`` and
registers a ``whispercpp`` model in the ``transcription`` pool; a variant outside whisper.cpp's
names is refused before the hub is asked; a file without the ``ggml`` magic is neither kept
nor registered. The curated Whisper entries are listed, and come from a mirror only with
their figures pinned.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from IPython.utils.capture import capture_output

from lemonade_jupyter.core import curated
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.server.embedded import EmbeddedServer
from tests.fakes.fake_hub import FakeHub
from tests.helpers.http import API
from tests.kernel.conftest import ip, use_client  # noqa: F401 - the IPython shell fixture

from .conftest import cached_files

REPO = "ggerganov/whisper.cpp"
CURATED_WHISPER = ("Whisper-Tiny", "Whisper-Base", "Whisper-Small", "Whisper-Large-v3-Turbo")


def write_whisper_file(path: Path) -> Path:
    """A small file in whisper.cpp's model layout: the ``ggml`` magic, then tiny hparams."""
    hparams = (51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1)  # tiny's shape, f16
    path.write_bytes(struct.pack("<I", 0x67676D6C) + struct.pack("<11i", *hparams)
                     + bytes(range(256)) * 64)
    return path


@pytest.fixture(scope="module")
def whisper_hub(tmp_path_factory: pytest.TempPathFactory, default_model_file: str
                ) -> Iterator[FakeHub]:
    work = tmp_path_factory.mktemp("whisper-hub")
    model = str(write_whisper_file(work / "tiny.bin"))
    files = {"ggml-tiny.en.bin": model, "ggml-base.bin": model,
             "ggml-small.bin": default_model_file,  # a GGUF under a whisper.cpp name
             "README.md": str(default_model_file)}
    with FakeHub({REPO: {"files": files}}, work) as hub:
        hub.model_file = model  # type: ignore[attr-defined]
        yield hub


@pytest.fixture
def whisper_cache(hub_cache: Path, whisper_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
                  ) -> Path:
    """The private hub cache of ``hub_cache``, with ``HF_ENDPOINT`` at the whisper hub."""
    monkeypatch.setenv("HF_ENDPOINT", whisper_hub.url)
    whisper_hub.reset()
    return hub_cache


async def models(api, show_all: bool = False) -> dict[str, dict[str, Any]]:
    answer = await api.get(f"{API}/models", params={"show_all": "true"} if show_all else {})
    assert answer.code == 200, answer.body
    return {m["id"]: m for m in answer.json["data"]}


async def test_whisper_pull_registers_a_transcription_model(api, whisper_cache, whisper_hub,
                                                            lemonade_data_dir):
    answer = await api.post(f"{API}/pull", {"model_name": "user.tiny",
                                            "checkpoint": f"{REPO}:tiny.en"})
    assert answer.code == 200, answer.body
    path = Path(answer.json["path"])
    assert path.name == "ggml-tiny.en.bin"
    assert path.read_bytes() == Path(whisper_hub.model_file).read_bytes()
    assert answer.json["type"] == "transcription"
    listed = (await models(api))["user.tiny"]
    assert listed["recipe"] == "whispercpp" and listed["labels"] == ["transcription"]
    assert listed["type"] == "transcription" and listed["downloaded"] is True
    saved = json.loads((lemonade_data_dir / "user_models.json").read_text())
    assert saved[0]["recipe"] == "whispercpp" and saved[0]["source"] == f"{REPO}:tiny.en"
    # The file name as the variant, with labels of one's own: the label is added first.
    answer = await api.post(f"{API}/pull", {"model_name": "user.base", "labels": ["audio"],
                                            "checkpoint": f"{REPO}:ggml-base.bin"})
    assert answer.code == 200, answer.body
    assert (await models(api))["user.base"]["labels"] == ["transcription", "audio"]


@pytest.mark.parametrize("body,status,param", [
    ({"checkpoint": f"{REPO}:tiny.fr"}, 400, "checkpoint"),
    ({"checkpoint": f"{REPO}:tiny-encoder.mlmodelc.zip"}, 400, "checkpoint"),
    ({"checkpoint": REPO}, 400, "checkpoint"),
    ({"checkpoint": f"{REPO}:tiny.en", "recipe": "llamacpp"}, 400, "recipe"),
    ({"checkpoint": f"{REPO}:tiny.en", "mmproj": "ggml-base.bin"}, 400, "mmproj"),
    ({"checkpoint": "test/SmolLM2-GGUF:Q8_0", "recipe": "whispercpp"}, 400, "recipe"),
])
async def test_bad_whisper_pulls_are_refused_before_the_hub_is_asked(
        api, whisper_cache, whisper_hub, body, status, param):
    answer = await api.post(f"{API}/pull", {"model_name": "user.bad", **body})
    assert answer.code == status, answer.body
    assert answer.error["param"] == param
    assert whisper_hub.requests() == [] and "user.bad" not in await models(api)


async def test_a_variant_the_repository_lacks_is_404_listing_its_models(api, whisper_cache):
    answer = await api.post(f"{API}/pull", {"model_name": "user.medium",
                                            "checkpoint": f"{REPO}:medium.en"})
    assert answer.code == 404, answer.body
    assert answer.error["variants"] == ["base", "small", "tiny.en"]
    assert "user.medium" not in await models(api)


async def test_a_file_without_the_ggml_magic_is_not_kept_nor_registered(api, whisper_cache):
    answer = await api.post(f"{API}/pull", {"model_name": "user.small",
                                            "checkpoint": f"{REPO}:small"})
    assert answer.code == 502, answer.body
    assert answer.error["code"] == "hub_error" and "ggml magic" in answer.error["message"]
    assert "ggml-small.bin" in answer.error["message"]
    assert "user.small" not in await models(api)
    assert not [p for p in cached_files(whisper_cache) if "blobs" in p.parts]


async def test_a_local_whisper_file_registers_with_recipe_whispercpp(
        api, tmp_path, default_model_file):
    model = write_whisper_file(tmp_path / "ggml-tiny.bin")
    answer = await api.post(f"{API}/pull", {"model_name": "user.local", "recipe": "whispercpp",
                                            "checkpoint": str(model)})
    assert answer.code == 200, answer.body
    listed = (await models(api))["user.local"]
    assert listed["type"] == "transcription" and listed["recipe"] == "whispercpp"
    answer = await api.post(f"{API}/pull", {"model_name": "user.fake", "recipe": "whispercpp",
                                            "checkpoint": default_model_file})
    assert answer.code == 400 and "not a whisper.cpp" in answer.error["message"]
    assert "user.fake" not in await models(api)


async def test_curated_whisper_models_are_listed_and_refused_from_a_mirror(
        api, whisper_cache, whisper_hub):
    listed = await models(api, show_all=True)
    for name in CURATED_WHISPER:
        entry = listed[name]
        assert entry["recipe"] == "whispercpp" and entry["type"] == "transcription"
        assert entry["downloaded"] is False and entry["checkpoint"].startswith(f"{REPO}:")
        assert entry["size"] > 0
    answer = await api.post(f"{API}/pull", {"model_name": "Whisper-Tiny"})
    assert answer.code == 403, answer.body  # pins nothing: only from the official hub
    assert whisper_hub.requests() == []


@pytest.fixture
def pinned_whisper(test_curated_file: Path, hub_dir: Path, whisper_hub: FakeHub,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A curated list where Whisper-Base pins the served file's figures (read by the server
    that starts after this fixture)."""
    data = Path(whisper_hub.model_file).read_bytes()
    figures = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    entries = json.loads(test_curated_file.read_text())
    for entry in entries:
        if entry["model_name"] == "Whisper-Base":
            entry["files"] = {"ggml-base.bin": figures}
    path = hub_dir / "curated_whisper_pinned.json"
    path.write_text(json.dumps(entries))
    monkeypatch.setattr(curated, "CURATED_FILE", path)


async def test_a_pinned_curated_whisper_model_is_pulled_and_checked(pinned_whisper, api,
                                                                    whisper_cache):
    answer = await api.post(f"{API}/pull", {"model_name": "Whisper-Base"})
    assert answer.code == 200, answer.body
    entry = (await models(api))["Whisper-Base"]
    assert entry["downloaded"] is True and entry["recipe"] == "whispercpp"


@pytest.fixture
def embedded(tmp_path: Path, whisper_cache: Path) -> Iterator[RouterClient]:
    """An embedded router (its own thread and data dir) downloading from the whisper hub."""
    server = EmbeddedServer(data_dir=tmp_path / "embedded-data")
    server.start()
    client = RouterClient(server.url, server.token, kind="explicit", source="test")
    yield client
    client.close()
    server.stop()


def test_magic_pull_of_a_whisper_checkpoint_needs_no_recipe(ip, embedded, whisper_cache):
    """``%lemonade pull`` sends no recipe unless given: the checkpoint brings its own."""
    use_client(ip, embedded)
    with capture_output():
        msg = ip.run_line_magic("lemonade", f"pull tiny {REPO}:tiny.en")
    assert repr(msg).startswith(f"Pulled user.tiny (transcription) from {REPO}:tiny.en in ")
    listed = {m["id"]: m for m in embedded.models()}["user.tiny"]
    assert listed["recipe"] == "whispercpp" and listed["labels"] == ["transcription"]


async def test_an_offline_pull_checks_the_cached_file_too(api, whisper_cache, monkeypatch):
    """With ``HF_HUB_OFFLINE`` only the cache is read: a file there under a whisper.cpp name
    that is not a whisper.cpp model (another tool's, a damaged copy) is refused just the same."""
    snapshot = whisper_cache / "models--ggerganov--whisper.cpp" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "ggml-medium.bin").write_bytes(b"GGUF" + b"\0" * 60)
    write_whisper_file(snapshot / "ggml-base.en.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answer = await api.post(f"{API}/pull", {"model_name": "user.medium",
                                            "checkpoint": f"{REPO}:medium"})
    assert answer.code == 502 and "ggml magic" in answer.error["message"], answer.body
    assert "user.medium" not in await models(api)
    answer = await api.post(f"{API}/pull", {"model_name": "user.base",
                                            "checkpoint": f"{REPO}:base.en"})
    assert answer.code == 200, answer.body
    assert (await models(api))["user.base"]["type"] == "transcription"


async def test_a_cached_blob_without_the_magic_is_refused_before_it_is_linked(
        api, whisper_cache, whisper_hub, model_figures, default_model_file):
    """Online, a file whose blob is already in the cache is not fetched again, only checked:
    the check of the magic applies to it as to a download."""
    blobs = whisper_cache / "models--ggerganov--whisper.cpp" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / str(model_figures["sha256"])).symlink_to(default_model_file)  # the ETag's name
    answer = await api.post(f"{API}/pull", {"model_name": "user.small",
                                            "checkpoint": f"{REPO}:small"})
    assert answer.code == 502 and "ggml magic" in answer.error["message"], answer.body
    assert not whisper_hub.downloads("ggml-small.bin")  # the cached blob was not fetched again
    assert "user.small" not in await models(api)
