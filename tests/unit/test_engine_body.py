"""``body_for_engine``: which bodies get the default length, and that the others are sent
byte for byte as the client wrote them."""

from __future__ import annotations

import json

import pytest

from lemonade_jupyter.server.engine_routes import PROXIED, body_for_engine

CAPPED = [path for path, route in PROXIED.items() if route.caps_tokens]


def test_only_llama_cpp_own_generation_routes_cap_tokens():
    assert sorted(CAPPED) == ["completion", "infill"]


@pytest.mark.parametrize("path", CAPPED)
def test_a_body_without_a_length_gets_the_default(path):
    body = {"model": "m", "prompt": "hi", "stream": True, "n_predict": None}
    sent = json.loads(body_for_engine(PROXIED[path], body, b"raw", 32))
    assert sent == {**body, "n_predict": 32}


@pytest.mark.parametrize("path", CAPPED)
@pytest.mark.parametrize("length", [{"n_predict": 500}, {"max_tokens": 3}, {"n_predict": -1}])
def test_a_given_length_is_sent_as_it_is(path, length):
    raw = json.dumps({"model": "m", "prompt": "hi", **length}).encode()
    assert body_for_engine(PROXIED[path], json.loads(raw), raw, 32) is raw


@pytest.mark.parametrize("cap", [-1, None])
def test_no_cap_sends_the_body_as_it_is(cap):
    raw = b'{"model": "m", "prompt": "hi"}'
    assert body_for_engine(PROXIED["completion"], json.loads(raw), raw, cap) is raw


@pytest.mark.parametrize("path", sorted(set(PROXIED) - set(CAPPED)))
def test_other_routes_are_sent_as_they_are(path):
    raw = b'{"model": "m", "prompt": "hi"}'
    assert body_for_engine(PROXIED[path], json.loads(raw), raw, 32) is raw
