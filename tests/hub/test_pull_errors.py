"""Every failure a pull can meet, answered in words and fast, in a real Jupyter server.

Each path the fake hub can provoke (401, 403 gated, 404 repository, 404 file, 500, a listing
that is not JSON), a port where nothing listens, a host name that does not resolve and a hub
that never accepts the connection: each gets its documented error code, a message that names
the problem for a person and never a Python class name, and comes within seconds.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from lemonade_jupyter.core import hub_transfer
from tests.helpers.http import API

from .conftest import BROKEN, GARBLED, GATED, GONE, PRIVATE, SMOL

#: What a Python class name or a traceback looks like in a message.
CLASS_NAME = re.compile(r"\b[A-Za-z_]*(Error|Exception|Timeout|Cancelled)\b|Traceback|httpx|"
                        r"huggingface_hub|\b[a-z_]+\.[A-Z][A-Za-z]+\b")
#: How long an unreachable hub may take to be reported.
FAST_S = 4.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A hub address that never completes a connection: a listening socket that accepts
    nothing, its backlog filled, so that further connection attempts hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):  # enough to fill the accept queue whatever the kernel rounds it to
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for sock in (*fillers, server):
            sock.close()


@pytest.mark.parametrize("checkpoint,token,status,code,words", [
    (f"{PRIVATE}:Q4_1", None, 401, "hub_unauthorized", "set HF_TOKEN"),
    (f"{PRIVATE}:Q4_1", "wrong", 401, "hub_unauthorized", "refused the token in HF_TOKEN"),
    (f"{GATED}:Q4_1", None, 403, "hub_forbidden", "is gated"),
    ("test/no-such-GGUF:Q4_1", None, 404, "checkpoint_not_found", "was not found"),
    (f"{SMOL}/nope-Q4_0.gguf", None, 404, "checkpoint_not_found", "nope-Q4_0.gguf"),
    (f"{GONE}:Q4_1", None, 404, "checkpoint_not_found",
     "file SmolLM2-135M-Instruct-Q4_1.gguf of test/gone-GGUF is not on"),
    (f"{BROKEN}:Q4_1", None, 503, "hub_unavailable", "failed (HTTP 500)"),
    (f"{GARBLED}:Q4_1", None, 502, "hub_error", "not JSON"),
], ids=["401-no-token", "401-bad-token", "403-gated", "404-repo", "404-file", "404-listed-file",
        "500", "bad-json"])
async def test_hub_errors_are_told_in_words(api, hub_cache, monkeypatch, checkpoint, token,
                                            status, code, words):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    answer = await api.post(f"{API}/pull", {"model_name": "user.e", "checkpoint": checkpoint})
    assert answer.code == status, answer.body
    assert answer.error["code"] == code and answer.error["param"] == "checkpoint"
    message = answer.error["message"]
    assert words in message and not CLASS_NAME.search(message), message
    assert "user.e" not in {m["id"] for m in (await api.get(f"{API}/models")).json["data"]}


@pytest.mark.parametrize("where", ["refused", "no-such-host", "never-accepts"])
async def test_an_unreachable_hub_is_reported_in_seconds(api, hub_cache, monkeypatch,
                                                         full_backlog, where):
    endpoint = {"refused": f"http://127.0.0.1:{free_port()}",
                "no-such-host": "http://no-such-host.invalid",
                "never-accepts": full_backlog}[where]
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub_transfer, "CONNECT_TIMEOUT_S", 1.5)  # the default is 5 s
    began = time.monotonic()
    answer = await api.post(f"{API}/pull", {"model_name": "user.u",
                                            "checkpoint": f"{SMOL}:Q4_1"})
    took = time.monotonic() - began
    assert answer.code == 503 and answer.error["code"] == "hub_unavailable", answer.body
    message = answer.error["message"]
    assert f"The hub at {endpoint} could not be reached" in message, message
    assert not CLASS_NAME.search(message), message
    assert {"refused": "refused", "no-such-host": "does not resolve",
            "never-accepts": "no connection within 1.5 s"}[where] in message
    assert took < FAST_S, took


def test_the_class_name_pattern_catches_class_names():
    for text in ("ConnectError: x", "httpx.ConnectError", "a RemoteProtocolError", "Traceback",
                 "KeyError", "ReadTimeout", "requests.HTTPError"):
        assert CLASS_NAME.search(text), text
    for text in ("The hub at http://127.0.0.1:1 could not be reached: the connection was "
                 "refused (nothing listens there). Check the network and HF_ENDPOINT, or set "
                 "HF_HUB_OFFLINE=1 to use only models already in the cache.",
                 "Repository test/no-such-GGUF was not found on http://127.0.0.1:5"):
        assert not CLASS_NAME.search(text), text
