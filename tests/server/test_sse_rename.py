"""The proxy's ``"model"`` rename (server/answers.py ``Renamer``): on the bytes when that is safe,
through JSON when it is not, and never inside text."""

from __future__ import annotations

import json

from lemonade_jupyter.server.answers import Renamer

PATH = "/models/SmolLM2 \\\"q\\\".gguf"  # as JSON text: a quote inside the name


def _event(model_json: str = json.dumps("/models/a.gguf"), content: str = " hi",
           extra: str = "") -> bytes:
    return (f'data: {{"choices":[{{"delta":{{"content":{json.dumps(content)}}}}}],'
            f'"created":1,"model":{model_json},"x":1.50,"u":"\\u00e9"{extra}}}\n\n').encode()


def test_llama_server_events_are_renamed_on_the_bytes():
    rename = Renamer("user.alias")
    block = _event() * 3 + b"data: [DONE]\n\n"
    out = rename(block)
    # Only the model field changed: JSON would have rewritten 1.50 and the \u escape.
    assert out == block.replace(b'"model":"/models/a.gguf"', b'"model":"user.alias"')
    assert rename(_event()) == _event(json.dumps("user.alias"))  # the same, once learned


def test_a_name_with_escapes_either_side():
    rename = Renamer('odd "name" é')
    out = rename(_event(f'"{PATH}"'))
    data = json.loads(out[6:])
    assert data["model"] == 'odd "name" é'
    assert data["x"] == 1.5 and data["u"] == "é"


def test_text_that_looks_like_a_model_field_is_left_alone():
    rename = Renamer("user.alias")
    content = '{"model":"evil"} and "model":"x"'
    data = json.loads(rename(_event(content=content))[6:])
    assert data["choices"][0]["delta"]["content"] == content
    assert data["model"] == "user.alias"


def test_anything_else_goes_through_json():
    rename = Renamer("u")
    # Spaces around the colon, a null, a "model" string value, a key that ends in "model".
    for event, expected in (
        (b'data: {"model": "/m.gguf", "a": 1}\n\n', {"model": "u", "a": 1}),
        (b'data: {"model":null,"a":1}\n\n', {"model": "u", "a": 1}),
        (b'data: {"object":"model","model":"/m.gguf"}\n\n', {"object": "model", "model": "u"}),
        (b'data: {"x \\"model":"v","model":"/m.gguf"}\n\n', {'x "model': "v", "model": "u"}),
    ):
        out = rename(event)
        assert out.startswith(b"data: ") and out.endswith(b"\n\n")
        assert json.loads(out[6:]) == expected, event


def test_events_without_a_model_pass_unchanged():
    rename = Renamer("u")
    for block in (b": ping\n\n", b"data: [DONE]\n\n", b'data: {"choices":[]}\n\n',
                  b"data: not json\n\n"):
        assert rename(block) == block


def test_a_plain_json_answer():
    rename = Renamer("u")
    body = b'{"choices":[{"message":{"content":"hi"}}],"model":"/m.gguf","usage":{"n":1.0}}'
    assert rename(body) == body.replace(b"/m.gguf", b"u")
    assert json.loads(rename(b'{"model": "/m.gguf"}')) == {"model": "u"}
