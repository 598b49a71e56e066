"""Junk bodies on every POST route give a 4xx JSON error envelope (Ollama's error shape on
the Ollama API) and change nothing.

ONE app for the module (``shared_api``: the real handlers and router on in-memory backends):
junk is refused before any backend is asked, so what a backend is does not matter here."""

from __future__ import annotations

import json

from tornado import web

from lemonade_jupyter.server.base import MAX_BODY_BYTES
from lemonade_jupyter.server.routes import ROUTES

from tests.helpers.envelope import OLLAMA_PREFIX, assert_ollama_error
from tests.helpers.http import API

POST_PATHS = [
    path for path, cls, _kw in ROUTES if cls.post is not web.RequestHandler.post
]

#: Bodies that no POST route may accept (each is wrong for every route).
JUNK: dict[str, bytes] = {
    "empty": b"",
    "blank": b"  \n ",
    "not JSON": b"not json",
    "truncated": b'{"model_name": ',
    "array": b"[1, 2]",
    "string": b'"text"',
    "null": b"null",
    "number": b"1e999",
    "bad utf-8": b'{"model_name": "\xff\xfe"}',
    "nested": b"[" * 100_000 + b"]" * 100_000,
    "wrong types": json.dumps({
        "model_name": 5, "model": ["x"], "pinned": "yes", "checkpoint": 5, "labels": 5,
        "pct": "x", "max_loaded_models": "x", "messages": 5, "stream": "yes",
    }).encode(),
    "nulls": json.dumps({"model_name": None, "model": None, "pinned": None,
                         "pct": None}).encode(),
    "typo key": json.dumps({"modelname": "SmolLM2-135M-Instruct-GGUF"}).encode(),
}


def _snapshot(api):
    return (
        api.loaded(),
        api.get("lemonade/internal/config").json,
        api.get(f"{API}/models").json,
        api.health()["pinned_models"],
    )


def test_junk_bodies_on_every_post_route(shared_api, default_model_name):
    assert len(POST_PATHS) >= 9, POST_PATHS
    shared_api.load(default_model_name)  # something that junk could unload, evict or touch
    before = _snapshot(shared_api)
    for path in POST_PATHS:
        for case, raw in JUNK.items():
            answer = shared_api.post(f"lemonade/{path}", raw=raw)
            assert 400 <= answer.code < 500, (path, case, answer.code, answer.body[:300])
            if path.startswith(OLLAMA_PREFIX):
                assert_ollama_error(answer)
                continue
            err = answer.error  # the envelope, never a traceback or HTML
            assert err["type"] == "invalid_request_error", (path, case, err)
    assert _snapshot(shared_api) == before


def test_huge_bodies_are_refused_with_413(shared_api, default_model_name):
    shared_api.load(default_model_name)
    before = _snapshot(shared_api)
    filler = b"x" * (MAX_BODY_BYTES + 1)
    huge = b'{"model_name": "' + filler + b'", "model": "' + default_model_name.encode() + b'"}'
    # The audio routes take uploads up to max_audio_upload_mib (tests/speech checks theirs).
    for path in [p for p in POST_PATHS if "/audio/" not in p]:
        answer = shared_api.post(f"lemonade/{path}", raw=huge)
        assert answer.code == 413, (path, answer.code, answer.body[:300])
        message = (assert_ollama_error(answer) if path.startswith(OLLAMA_PREFIX)
                   else answer.error["message"])
        assert "larger than" in message
    assert _snapshot(shared_api) == before
