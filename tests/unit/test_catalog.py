"""The catalog: user model validation, the GGUF check, types from labels, persistence."""

from __future__ import annotations

import json
import os

import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL, Catalog, is_gguf, model_type
from lemonade_jupyter.errors import InvalidRequestError, ModelNotFoundError


@pytest.fixture
def gguf(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 60)
    return str(path)


@pytest.mark.parametrize("name", ["user.a", "user.My-Model_2.Q4", "user.0", "user." + "x" * 128])
def test_user_name_accepted(tmp_path, gguf, name):
    assert Catalog(tmp_path).add_user_model(name, gguf).name == name


@pytest.mark.parametrize("name", [
    "a", "user.", "user..a", "user.-a", "User.a", "user.a b", "user.a/b", "user.é",
    "user." + "x" * 129, "", None, 3, ["user.a"], "SmolLM2-135M-Instruct-GGUF",
])
def test_user_name_rejected(tmp_path, gguf, name):
    with pytest.raises(InvalidRequestError) as info:
        Catalog(tmp_path).add_user_model(name, gguf)
    assert info.value.param == "model_name"


def test_checkpoint_must_be_absolute_existing_regular_gguf(tmp_path, gguf):
    cat = Catalog(tmp_path)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"GGML" + b"\x00" * 8)
    short = tmp_path / "short.gguf"
    short.write_bytes(b"GG")
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    cases = {
        "relative": "m.gguf",
        "missing": str(tmp_path / "nope.gguf"),
        "directory": str(tmp_path),
        "fifo": str(fifo),  # a non-regular file is refused without being opened
        "bad magic": str(not_gguf),
        "too short": str(short),
        "not a string": 42,
    }
    for why, checkpoint in cases.items():
        with pytest.raises(InvalidRequestError) as info:
            cat.add_user_model("user.a", checkpoint)
        assert info.value.param == "checkpoint", why
    assert "user.a" not in cat


def test_is_gguf(tmp_path, gguf):
    assert is_gguf(gguf)
    assert not is_gguf(str(tmp_path))
    assert not is_gguf(str(tmp_path / "missing"))


@pytest.mark.parametrize("recipe,labels,param", [
    ("vllm", None, "recipe"),
    ("llamacpp", "llm", "labels"),
    ("llamacpp", ["ok", ""], "labels"),
    ("llamacpp", ["a b"], "labels"),
    ("llamacpp", [1], "labels"),
    ("llamacpp", ["x"] * 17, "labels"),
])
def test_recipe_and_labels_validated(tmp_path, gguf, recipe, labels, param):
    with pytest.raises(InvalidRequestError) as info:
        Catalog(tmp_path).add_user_model("user.a", gguf, recipe, labels)
    assert info.value.param == param


@pytest.mark.parametrize("labels,expected", [
    ([], "llm"), (["llm"], "llm"), (["chat", "embeddings"], "embedding"),
    (["Embedding"], "embedding"), (["reranking"], "reranking"), (["tts"], "tts"),
    (["vision"], "llm"),
])
def test_model_type_from_labels(labels, expected):
    assert model_type(labels) == expected


def test_user_models_persist(tmp_path, gguf):
    cat = Catalog(tmp_path)
    cat.add_user_model("user.emb", gguf, "llamacpp", ["embeddings"])
    cat.add_user_model("user.chat", gguf)
    again = Catalog(tmp_path)
    assert [s.name for s in again.all()] == [DEFAULT_MODEL, "user.chat", "user.emb"]
    assert again.get("user.emb").type == "embedding"
    assert again.get("user.emb").checkpoint == gguf
    again.remove_user_model("user.chat")
    assert "user.chat" not in Catalog(tmp_path)


def test_model_whose_file_vanished_stays_listed(tmp_path, gguf):
    Catalog(tmp_path).add_user_model("user.gone", gguf)
    os.unlink(gguf)
    assert Catalog(tmp_path).get("user.gone").checkpoint == gguf


@pytest.mark.parametrize("content", ["{not json", '{"model_name": "user.a"}', "42"])
def test_corrupt_user_models_file_is_moved_aside(tmp_path, content):
    path = tmp_path / "user_models.json"
    path.write_text(content)
    cat = Catalog(tmp_path)
    assert [s.name for s in cat.all()] == [DEFAULT_MODEL]
    assert not path.exists()
    aside = list(tmp_path.glob("user_models.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == content


def test_bad_entries_skipped(tmp_path, gguf):
    (tmp_path / "user_models.json").write_text(json.dumps([
        "junk", {"model_name": "nope"}, {"model_name": "user.ok", "checkpoint": gguf},
    ]))
    assert [s.name for s in Catalog(tmp_path).all()] == [DEFAULT_MODEL, "user.ok"]


def test_unknown_and_builtin(tmp_path):
    cat = Catalog(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        cat.get("user.nope")
    assert info.value.status_code == 404
    with pytest.raises(InvalidRequestError):
        cat.remove_user_model(DEFAULT_MODEL)
    with pytest.raises(ModelNotFoundError):
        cat.remove_user_model("user.nope")
    assert cat.get(DEFAULT_MODEL).builtin


def test_catalog_without_data_dir_does_not_write(tmp_path, gguf, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Catalog(None).add_user_model("user.a", gguf)
    assert not (tmp_path / "user_models.json").exists()
