"""The JSON error envelope every error answer carries:
``{"error": {"message": str, "type": str, "code": str | None, "param": str | None, ...}}``."""

from __future__ import annotations

import json
from typing import Any

import httpx


def _status_and_body(answer: Any) -> tuple[int, bytes]:
    if isinstance(answer, httpx.Response):
        return answer.status_code, answer.read()
    return answer.code, answer.body  # the server suite's ``Answer`` (pytest-jupyter's fetch)


def assert_envelope(answer: Any) -> dict[str, Any]:
    """The body of ``answer`` (an ``httpx.Response``, or anything with ``code`` and ``body``)
    is the error envelope, with no traceback in its message; return its ``error`` object."""
    status, body = _status_and_body(answer)
    try:
        data = json.loads(body)
    except ValueError:
        raise AssertionError(f"not JSON ({status}): {body[:300]!r}") from None
    assert isinstance(data, dict), data
    err = data.get("error")
    assert isinstance(err, dict), data
    assert isinstance(err.get("message"), str) and err["message"], data
    assert isinstance(err.get("type"), str) and err["type"], data
    for key in ("code", "param"):
        assert key not in err or err[key] is None or isinstance(err[key], str), data
    assert "Traceback" not in err["message"], data
    return err


def slots_pinned_envelope(requested_model: str, model_type: str = "llm") -> dict[str, Any]:
    """The whole 409 body when every loaded model of the requested one's type is pinned."""
    return {
        "error": {
            "message": f"All loaded models of type {model_type} are pinned. "
                       "Unload a model first.",
            "type": "slots_pinned_error",
            "code": "slots_pinned_error",
            "param": "model",
            "requested_model": requested_model,
        }
    }


#: Routes under this prefix speak Ollama's API: their errors are ``{"error": "message"}``.
OLLAMA_PREFIX = "ollama/"


def assert_ollama_error(answer: Any) -> str:
    """The body of ``answer`` is Ollama's error shape, ``{"error": "message"}`` and nothing
    else, with no traceback; return the message."""
    status, body = _status_and_body(answer)
    try:
        data = json.loads(body)
    except ValueError:
        raise AssertionError(f"not JSON ({status}): {body[:300]!r}") from None
    assert isinstance(data, dict) and set(data) == {"error"}, data
    assert isinstance(data["error"], str) and data["error"], data
    assert "Traceback" not in data["error"], data
    return data["error"]


def assert_error_answer(route: str, answer: Any) -> None:
    """The error shape of ``route`` (a path under ``lemonade/``): Ollama's for the Ollama
    API, the envelope for every other route."""
    if route.startswith(OLLAMA_PREFIX):
        assert_ollama_error(answer)
    else:
        assert_envelope(answer)
