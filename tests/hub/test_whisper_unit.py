"""The pure parts of whisper.cpp pulls: the variant allowlist, which file a variant picks, the
magic check, and the recipe and label a pulled speech model gets."""

from __future__ import annotations

import struct

import pytest

from lemonade_jupyter.core import whisper_models
from lemonade_jupyter.core.hub import HubRef, RepoFile, parse_checkpoint, plan_pull
from lemonade_jupyter.errors import HubNotFoundError, InvalidRequestError

REPO = "ggerganov/whisper.cpp"
LISTING = [RepoFile(p, 10) for p in (
    ".gitattributes", "README.md", "ggml-tiny.bin", "ggml-tiny.en.bin", "ggml-tiny-q5_1.bin",
    "ggml-base.en.bin", "ggml-large-v3-turbo.bin", "ggml-large-v3-turbo-q5_0.bin",
    "ggml-small.en-tdrz.bin", "ggml-tiny-encoder.mlmodelc.zip",
)]


@pytest.mark.parametrize("variant,path", [
    ("tiny.en", "ggml-tiny.en.bin"),
    ("tiny", "ggml-tiny.bin"),  # not the .en one nor the quantized one beside it
    ("Tiny-Q5_1", "ggml-tiny-q5_1.bin"),  # hub names ignore case
    ("large-v3-turbo", "ggml-large-v3-turbo.bin"),
    ("large-v3-turbo-q5_0", "ggml-large-v3-turbo-q5_0.bin"),
    ("ggml-base.en.bin", "ggml-base.en.bin"),  # the file name spelled as the variant
])
def test_whisper_variant_picks_its_ggml_file(variant, path):
    ref = parse_checkpoint(f"{REPO}:{variant}")
    assert ref == HubRef(REPO, variant=variant)
    plan = plan_pull(ref, LISTING)
    assert [f.path for f in plan.files] == [path] and plan.mmproj is None
    assert plan.variant == path.removeprefix("ggml-").removesuffix(".bin")


@pytest.mark.parametrize("variant", [
    "tiny.fr", "huge", "tiny\n", "tiny.en ", "tiny-encoder.mlmodelc.zip", "small.en-tdrz",
    "ggml-tiny.bin.bak", "tiny-q4_0", "large-v4",
])
def test_whisper_variant_outside_the_allowlist_is_400(variant):
    with pytest.raises(InvalidRequestError) as caught:
        plan_pull(HubRef(REPO, variant=variant), LISTING)
    assert caught.value.param == "checkpoint" and "whisper.cpp model name" in caught.value.message


def test_whisper_repository_without_a_variant_is_400():
    with pytest.raises(InvalidRequestError) as caught:
        plan_pull(HubRef(REPO), LISTING)
    assert f"{REPO}:VARIANT" in caught.value.message


def test_whisper_variant_the_repository_lacks_is_404_listing_what_it_has():
    with pytest.raises(HubNotFoundError) as caught:
        plan_pull(HubRef(REPO, variant="medium"), LISTING)
    assert caught.value.status_code == 404 and "ggml-medium.bin" in caught.value.message
    assert whisper_models.variants_in([f.path for f in LISTING]) == [
        "base.en", "large-v3-turbo", "large-v3-turbo-q5_0", "tiny", "tiny-q5_1", "tiny.en"]


def test_gguf_repositories_are_planned_as_before():
    listing = [RepoFile("model-Q4_0.gguf", 1), RepoFile("ggml-tiny.bin", 1)]
    plan = plan_pull(HubRef("org/other", variant="Q4_0"), listing)
    assert [f.path for f in plan.files] == ["model-Q4_0.gguf"]
    with pytest.raises(InvalidRequestError):  # a .bin is no model outside whisper.cpp's repo
        plan_pull(HubRef("org/other", variant="tiny"), listing)


def test_the_ggml_magic_is_checked_little_endian(tmp_path):
    good, swapped, gguf, short = (tmp_path / n for n in ("good", "swapped", "gguf", "short"))
    good.write_bytes(struct.pack("<I", 0x67676D6C) + b"\0" * 44)
    swapped.write_bytes(struct.pack(">I", 0x67676D6C) + b"\0" * 44)
    gguf.write_bytes(b"GGUF" + b"\0" * 44)
    short.write_bytes(b"lmg")
    assert good.read_bytes()[:4] == b"lmgg"
    assert whisper_models.is_whisper_file(str(good))
    assert not whisper_models.is_whisper_file(str(swapped))
    assert not whisper_models.is_whisper_file(str(gguf))
    assert not whisper_models.is_whisper_file(str(short))
    assert not whisper_models.is_whisper_file(str(tmp_path / "missing"))


@pytest.mark.parametrize("recipe,labels,expected", [
    (None, None, ["transcription"]),
    ("whispercpp", [], ["transcription"]),
    ("", ["audio"], ["transcription", "audio"]),
    (None, ["transcription", "en"], ["transcription", "en"]),
])
def test_a_pulled_whisper_model_gets_its_recipe_and_label(recipe, labels, expected):
    assert whisper_models.pull_fields(recipe, labels) == ("whispercpp", expected)


def test_another_recipe_for_a_whisper_model_is_400():
    with pytest.raises(InvalidRequestError) as caught:
        whisper_models.pull_fields("llamacpp", None)
    assert caught.value.param == "recipe"
