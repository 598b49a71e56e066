"""Names are checked as whole strings: a trailing newline or carriage return is refused.

In a Python pattern ``$`` also matches before a final ``"\\n"``, so ``"smol\\n"`` used to pass
every ``^…$`` check. Each kind of name a request can give is tried here against a real Jupyter
server with the extension: the answer is a 400 in the error envelope, and the aliases and the
model list are what they were.
"""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from tests.helpers.http import API

TRAILERS = ["\n", "\r", "\r\n"]


async def _state(api) -> tuple[dict, list]:
    aliases = (await api.get(f"{API}/alias")).json["aliases"]
    models = (await api.get(f"{API}/models", params={"show_all": "true"})).json["data"]
    return aliases, sorted((m["id"], tuple(m.get("labels", ()))) for m in models)


async def _refused(api, path: str, body: dict, param: str) -> None:
    answer = await api.post(path, body)
    assert answer.code == 400, (body, answer.body)
    error = answer.error
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


@pytest.mark.parametrize("trailer", TRAILERS, ids=["lf", "cr", "crlf"])
async def test_names_with_a_trailing_line_break_are_refused(api, default_model_file, trailer):
    await api.pull("user.kept", default_model_file)
    assert (await api.post(f"{API}/alias", {"model_name": DEFAULT_MODEL,
                                            "alias": "smol"})).code == 200
    before = await _state(api)

    # Alias: the new name, and the model it names.
    await _refused(api, f"{API}/alias",
                   {"model_name": DEFAULT_MODEL, "alias": "other" + trailer}, "alias")
    await _refused(api, f"{API}/alias",
                   {"model_name": DEFAULT_MODEL + trailer, "alias": "other"}, "model_name")
    await _refused(api, f"{API}/alias",
                   {"model_name": "smol" + trailer, "alias": "other"}, "model_name")
    # A user model's name, and its labels, on a pull of a local file.
    await _refused(api, f"{API}/pull", {"model_name": "user.new" + trailer,
                                        "checkpoint": default_model_file}, "model_name")
    await _refused(api, f"{API}/pull", {"model_name": "user.kept" + trailer,
                                        "checkpoint": default_model_file}, "model_name")
    await _refused(api, f"{API}/pull", {"model_name": "user.new",
                                        "checkpoint": default_model_file,
                                        "labels": ["llm" + trailer]}, "labels")
    # The projector file of a hub pull (checked before anything is fetched).
    await _refused(api, f"{API}/pull", {"model_name": "user.vision",
                                        "checkpoint": "org/repo:Q4_K_M",
                                        "mmproj": "mmproj.gguf" + trailer}, "mmproj")

    assert await _state(api) == before
    # The same names without the trailer are fine: it is the trailer that was refused.
    assert (await api.post(f"{API}/alias", {"model_name": DEFAULT_MODEL,
                                            "alias": "other"})).code == 200
