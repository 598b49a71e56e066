"""The exception tree: every error knows its HTTP status and type, and renders as the envelope."""

from __future__ import annotations

import inspect
import json

import pytest

from lemonade_jupyter import errors
from lemonade_jupyter.errors import (
    ClientError,
    CoolingDownError,
    LemonadeError,
    SlotsPinnedError,
    error_body,
)

CLASSES = [obj for name in errors.__all__
           if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, LemonadeError)]

EXPECTED_STATUS = {
    "LemonadeError": 500, "InvalidRequestError": 400, "ModelNotFoundError": 404,
    "UnsupportedAudioFormatError": 400, "AudioTooLongError": 400, "AudioTooLargeError": 413,
    "SlotsPinnedError": 409, "InsufficientMemoryError": 409, "CoolingDownError": 503, "EngineMissingError": 503,
    "ModelLoadError": 500, "BackendShutdownError": 503, "UpstreamError": 502,
    "BackendTransportError": 502, "RemoteUnreachableError": 502, "RemoteTimeoutError": 504,
    "RemoteLoopError": 508, "RemoteRedirectError": 502, "RemoteAnswerTooLargeError": 502,
    "HubError": 502, "HubAuthError": 401, "HubAccessError": 403,
    "HubNotFoundError": 404, "HubUnavailableError": 503, "UnverifiedSourceError": 403,
    "InsufficientStorageError": 507,
    "PullCancelledError": 409, "QueueFullError": 429,
    "QuotaExceededError": 409, "TooManyRequestsError": 429,
    "ForbiddenError": 403, "MissingScopeError": 403, "LockedDownError": 403,
}


def make(cls):
    if cls is SlotsPinnedError:
        return cls("llm", "user.x")
    if cls is errors.InsufficientMemoryError:
        return cls("user.x", "cpu", needed_bytes=3 << 20, free_bytes=1 << 20, pinned_bytes=0)
    if cls is CoolingDownError:
        return cls("user.x", 4.2, "boom")
    if cls is errors.QueueFullError:
        return cls("user.x", slots=1, queued=2)
    if cls is errors.MissingScopeError:
        return cls("custom:lemonade:pin", "Pinning a model")
    if cls is errors.LockedDownError:
        return cls("model_folders", "not under a model folder", param="checkpoint")
    if cls is errors.QuotaExceededError:
        return cls("pins_per_user", "two pins at most", limit=2, used=2, requested=1)
    if cls is errors.TooManyRequestsError:
        return cls("alice", limit=4, used=4)
    if cls is ClientError:
        return cls(418, {"error": {"type": "teapot", "code": "tea"}}, "short and stout")
    return cls("something went wrong", param="p")


def test_every_error_is_listed():
    assert {c.__name__ for c in CLASSES} == set(EXPECTED_STATUS) | {"ClientError"}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_has_status_and_type(cls):
    exc = make(cls)
    assert isinstance(exc.status_code, int) and 400 <= exc.status_code <= 599
    assert isinstance(exc.error_type, str) and exc.error_type
    if cls.__name__ in EXPECTED_STATUS:
        assert exc.status_code == EXPECTED_STATUS[cls.__name__]
    body = exc.to_body()
    json.dumps(body)  # always serialisable
    assert body["error"]["message"] == exc.message
    assert body["error"]["type"] == exc.error_type
    assert isinstance(exc.headers(), dict)


def test_400s_are_invalid_request_errors():
    for cls in CLASSES:
        exc = make(cls)
        if exc.status_code == 400:
            assert exc.error_type == "invalid_request_error"


def test_slots_pinned_body_matches_spec_exactly():
    exc = SlotsPinnedError("llm", "user.third")
    assert exc.status_code == 409
    assert exc.to_body() == {"error": {
        "message": "All loaded models of type llm are pinned. Unload a model first.",
        "type": "slots_pinned_error",
        "code": "slots_pinned_error",
        "param": "model",
        "requested_model": "user.third",
    }}


def test_model_not_found_code():
    exc = errors.ModelNotFoundError("nope", param="model")
    assert exc.to_body()["error"]["code"] == "model_not_found"


def test_cooling_down_has_retry_after():
    exc = CoolingDownError("m", 0.01)
    assert exc.retry_after_s == 1
    assert exc.headers() == {"Retry-After": "1"}
    assert exc.to_body()["error"]["code"] == "model_cooling_down"


def test_client_error_reads_the_envelope():
    exc = ClientError(409, SlotsPinnedError("llm", "x").to_body(), "pinned")
    assert (exc.status_code, exc.error_type, exc.code) == (409, "slots_pinned_error",
                                                          "slots_pinned_error")
    bare = ClientError(502, None, "bad gateway")
    assert bare.status_code == 502 and bare.body == {}


def test_error_body_omits_missing_code_and_param():
    assert error_body("m", "t") == {"error": {"message": "m", "type": "t"}}
