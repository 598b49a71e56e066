"""The name rules of ``core/names.py`` and the state files that hold names.

A name read back from ``model_aliases.json`` or ``user_models.json`` goes through the same
whole-string check as one given in a request: a hand-edited (or older) file with ``"smol\\n"``
must not bring that name back.
"""

from __future__ import annotations

import json

import pytest

from lemonade_jupyter.core import names
from lemonade_jupyter.core.aliases import ModelAliases
from lemonade_jupyter.core.catalog import DEFAULT_MODEL, Catalog
from lemonade_jupyter.core.validation import check_name
from lemonade_jupyter.errors import InvalidRequestError


@pytest.mark.parametrize("pattern,good", [
    (names.MODEL_NAME, "Qwen2.5-0.5B_x"),
    (names.USER_MODEL_NAME, "user.mine-1"),
    (names.LABEL, "embeddings"),
    (names.REPO_FILE, "sub/mmproj-f16.gguf"),
])
@pytest.mark.parametrize("trailer", ["\n", "\r", "\r\n", " ", "\t", "\x00"])
def test_names_spelled_matches_the_whole_string(pattern, good, trailer):
    assert names.spelled(pattern, good)
    assert not names.spelled(pattern, good + trailer)
    assert not names.spelled(pattern, trailer + good)


def test_names_spelled_refuses_what_is_not_a_string():
    for value in (None, 3, b"abc", ["abc"]):
        assert not names.spelled(names.MODEL_NAME, value)


def test_check_name_names_the_parameter():
    assert check_name("alias", "smol", names.MODEL_NAME, "a name") == "smol"
    with pytest.raises(InvalidRequestError) as caught:
        check_name("alias", "smol\n", names.MODEL_NAME, "a name")
    assert caught.value.param == "alias" and "must be a name" in str(caught.value)


def test_state_files_with_a_trailing_newline_name_load_without_it(tmp_path, default_model_file):
    (tmp_path / "model_aliases.json").write_text(json.dumps(
        {"smol\n": DEFAULT_MODEL, "good": DEFAULT_MODEL}))
    entry = {"checkpoint": default_model_file, "recipe": "llamacpp", "labels": ["llm"]}
    (tmp_path / "user_models.json").write_text(json.dumps(
        [{"model_name": "user.bad\n", **entry}, {"model_name": "user.good", **entry}]))
    catalog = Catalog(tmp_path)
    assert "user.good" in catalog and "user.bad\n" not in catalog
    aliases = ModelAliases(tmp_path, lambda name: name in catalog)
    assert aliases.to_json() == {"good": DEFAULT_MODEL}
